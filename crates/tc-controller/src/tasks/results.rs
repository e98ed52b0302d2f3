//! Task results to the store in batches: reports arriving together (50,000 agents answering
//! one run) are written in a few transactions instead of one each. A report is answered only
//! once its batch is committed.

use std::sync::Arc;

use tc_api::task::TaskResult;
use tc_store::Store;
use tokio::sync::{mpsc, oneshot};

/// Most results one transaction takes.
const MAX_BATCH: usize = 8192;

struct Job {
    results: Vec<TaskResult>,
    logs: Vec<(usize, String)>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The handle of the writer task.
pub struct ResultWriter {
    jobs: mpsc::UnboundedSender<Job>,
}

impl ResultWriter {
    /// Starts the writer on the current runtime.
    pub fn start(store: Arc<dyn Store>) -> ResultWriter {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let mut batch = vec![first];
                let mut count = batch[0].results.len();
                while count < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(job) => {
                            count += job.results.len();
                            batch.push(job);
                        }
                        Err(_) => break,
                    }
                }
                let mut results = Vec::with_capacity(count);
                let mut logs = Vec::new();
                let mut waiting = Vec::with_capacity(batch.len());
                for job in batch {
                    let offset = results.len();
                    logs.extend(job.logs.into_iter().map(|(i, text)| (i + offset, text)));
                    results.extend(job.results);
                    waiting.push(job.done);
                }
                let store = store.clone();
                let outcome =
                    tokio::task::spawn_blocking(move || store.put_task_results(&results, &logs))
                        .await
                        .map_err(|error| error.to_string())
                        .and_then(|result| result.map_err(|error| error.to_string()));
                for done in waiting {
                    let _ = done.send(outcome.clone());
                }
            }
        });
        ResultWriter { jobs }
    }

    /// Stores `results` (with the logs some carry) and returns once they are committed.
    pub async fn write(
        &self,
        results: Vec<TaskResult>,
        logs: Vec<(usize, String)>,
    ) -> Result<(), String> {
        if results.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job {
                results,
                logs,
                done,
            })
            .map_err(|_| "the task result writer stopped".to_string())?;
        wait.await
            .map_err(|_| "the task result writer stopped".to_string())?
    }
}
