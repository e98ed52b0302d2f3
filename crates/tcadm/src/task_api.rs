//! The task routes of the controller's API: creating a task, the results of a run (every page),
//! a client's `collectLogs` logs, and a client's results across tasks.

use reqwest::Method;
use serde::Deserialize;
use tc_api::task::{Task, TaskResult};

use crate::api::{API_PREFIX, ApiClient, ApiError, root_cause};

/// One page of `GET .../tasks/NAME/results`.
#[derive(Debug, Deserialize)]
struct ResultPage {
    /// The run (absent when the task has not started one).
    #[serde(default)]
    run: Option<u64>,
    items: Vec<TaskResult>,
    /// The last client of a page that is not the last one.
    #[serde(default, rename = "continue")]
    next: Option<String>,
}

/// The results of one run of a task, every target sorted by client name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunResults {
    /// The run (`None` before the task's first run).
    pub run: Option<u64>,
    /// Every target of the run.
    pub items: Vec<TaskResult>,
}

impl ApiClient {
    /// `POST /apis/thinfleet.io/v1/tasks`: creates a task; answers it as stored.
    pub fn create_task(&self, task: &Task) -> Result<Task, ApiError> {
        let url = self.url(&format!("{API_PREFIX}/tasks"), &[])?;
        let builder = self
            .request(Method::POST, url)
            .header("content-type", "application/json")
            .body(serde_json::to_string(task).expect("tasks serialize"));
        Self::decode(self.execute(builder)?)
    }

    /// `GET /apis/thinfleet.io/v1/tasks/NAME/results?run=` page after page: every target of
    /// the run (the newest when `run` is `None`).
    pub fn task_results(&self, name: &str, run: Option<u64>) -> Result<RunResults, ApiError> {
        let path = format!("{API_PREFIX}/tasks/{name}/results");
        let run_text = run.map(|run| run.to_string()).unwrap_or_default();
        let mut after = String::new();
        let mut results = RunResults::default();
        loop {
            let page: ResultPage =
                self.get_json(&path, &[("run", &run_text), ("after", &after)])?;
            results.run = results.run.or(page.run);
            results.items.extend(page.items);
            match page.next {
                // A page that does not move on would repeat forever.
                Some(next) if next > after => after = next,
                _ => return Ok(results),
            }
        }
    }

    /// One page of `GET /apis/thinfleet.io/v1/tasks/NAME/results?run=&state=&limit=`: the
    /// first `limit` targets of the run (in `state` only, when given), by client name.
    pub fn task_results_page(
        &self,
        name: &str,
        run: u64,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TaskResult>, ApiError> {
        let page: ResultPage = self.get_json(
            &format!("{API_PREFIX}/tasks/{name}/results"),
            &[
                ("run", &run.to_string()),
                ("state", state.unwrap_or("")),
                ("limit", &limit.to_string()),
            ],
        )?;
        Ok(page.items)
    }

    /// `GET /apis/thinfleet.io/v1/tasks/NAME/results/CLIENT/logs?run=`: what the client's
    /// `collectLogs` sent, as text.
    pub fn task_logs(&self, name: &str, client: &str, run: u64) -> Result<String, ApiError> {
        let url = self.url(
            &format!("{API_PREFIX}/tasks/{name}/results/{client}/logs"),
            &[("run", &run.to_string())],
        )?;
        let response = self.execute(self.request(Method::GET, url))?;
        let url = response.url().to_string();
        response.text().map_err(|error| ApiError::Protocol {
            url,
            message: root_cause(&error),
        })
    }

    /// `GET /apis/thinfleet.io/v1/clients/NAME/tasks`: the client's results in the kept runs
    /// of every task, newest first.
    pub fn client_tasks(&self, name: &str) -> Result<Vec<TaskResult>, ApiError> {
        let page: ResultPage = self.get_json(&format!("{API_PREFIX}/clients/{name}/tasks"), &[])?;
        Ok(page.items)
    }
}
