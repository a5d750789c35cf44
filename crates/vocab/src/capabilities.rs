//! What a task asks of the worker that runs it, what a worker can run, and the one
//! rule that matches them.
//!
//! The API fixes a task's [`TaskNeeds`] when it accepts the task; a worker announces
//! its [`Capabilities`] with every lease call; the store hands a worker only tasks
//! whose needs it meets ([`Capabilities::can_run`], which each store restates in its
//! lease query). A need that no worker of `sie serve` can meet is refused at POST, so
//! the worker and the engine never re-check a request: past the door, they assert.

use crate::names::{Pipeline, SchedulerKind};

/// What a task asks of its worker, fixed when the task is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskNeeds {
    pub pipeline: Pipeline,
    /// A scheduler the client named; `None` runs the model's own default, which every
    /// worker has.
    pub scheduler: Option<SchedulerKind>,
    /// The client asked for the safety checker explicitly. (Left out, a task runs with
    /// the checker where its worker has one.)
    pub safety_checker: bool,
}

/// What a worker can run: announced by remote workers with every lease call, and
/// known of the in-process workers of `sie serve`. The lists are sorted and free of
/// repeats (see [`Capabilities::new`]), so two announcements of the same worker
/// compare equal however they were ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    pipelines: Vec<Pipeline>,
    schedulers: Vec<SchedulerKind>,
    safety_checker: bool,
}

impl Capabilities {
    /// A worker that runs `pipelines` with `schedulers`, with or without a safety checker.
    pub fn new(
        pipelines: impl IntoIterator<Item = Pipeline>,
        schedulers: impl IntoIterator<Item = SchedulerKind>,
        safety_checker: bool,
    ) -> Self {
        let mut pipelines: Vec<Pipeline> = pipelines.into_iter().collect();
        pipelines.sort();
        pipelines.dedup();
        let mut schedulers: Vec<SchedulerKind> = schedulers.into_iter().collect();
        schedulers.sort();
        schedulers.dedup();
        Capabilities {
            pipelines,
            schedulers,
            safety_checker,
        }
    }

    pub fn pipelines(&self) -> &[Pipeline] {
        &self.pipelines
    }

    pub fn schedulers(&self) -> &[SchedulerKind] {
        &self.schedulers
    }

    pub fn safety_checker(&self) -> bool {
        self.safety_checker
    }

    /// The matching rule: the pipeline is one it runs, the scheduler (when named) one it
    /// has, and the safety checker (when asked for) installed.
    pub fn can_run(&self, needs: &TaskNeeds) -> bool {
        self.pipelines.contains(&needs.pipeline)
            && needs.scheduler.is_none_or(|s| self.schedulers.contains(&s))
            && (!needs.safety_checker || self.safety_checker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(scheduler: Option<SchedulerKind>, safety_checker: bool) -> TaskNeeds {
        TaskNeeds {
            pipeline: Pipeline::Text2Image,
            scheduler,
            safety_checker,
        }
    }

    #[test]
    fn a_worker_runs_what_it_announced_and_nothing_else() {
        let w = Capabilities::new([Pipeline::Text2Image], [SchedulerKind::Ddim], false);
        assert!(w.can_run(&needs(None, false)));
        assert!(w.can_run(&needs(Some(SchedulerKind::Ddim), false)));
        assert!(!w.can_run(&needs(Some(SchedulerKind::Pndm), false)));
        assert!(!w.can_run(&needs(None, true)));
        let inpaint = TaskNeeds {
            pipeline: Pipeline::Inpaint,
            ..needs(None, false)
        };
        assert!(!w.can_run(&inpaint));
    }

    #[test]
    fn lists_are_sorted_and_free_of_repeats() {
        let a = Capabilities::new(
            [Pipeline::Text2Image, Pipeline::Text2Image],
            [
                SchedulerKind::Pndm,
                SchedulerKind::LmsDiscrete,
                SchedulerKind::LmsDiscrete,
            ],
            true,
        );
        assert_eq!(a.pipelines(), [Pipeline::Text2Image]);
        assert_eq!(
            a.schedulers(),
            [SchedulerKind::LmsDiscrete, SchedulerKind::Pndm]
        );
        assert!(a.safety_checker());
    }
}
