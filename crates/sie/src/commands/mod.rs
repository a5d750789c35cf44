pub mod bench;
pub mod model;
