pub mod admin;
pub mod bench;
pub mod generate;
pub mod model;
pub mod serve;
