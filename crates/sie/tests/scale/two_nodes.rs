//! Two `sie api` nodes and two `sie worker`s on one database: 200 tasks, each done once.

use std::time::Duration;

use super::*;

#[test]
fn two_api_nodes_two_workers_run_200_tasks_each_exactly_once() {
    let db = Database::fresh(&admin_url());
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let t = tenant(&db.url, &["gpu-1", "gpu-2"]);
    let api1 = start_api(&db.url, "60s");
    let api2 = start_api(&db.url, "60s");
    // One worker per node: a task posted on one node wakes the worker waiting on the other.
    let _w1 = start_worker(&api1.url, &t.tokens["gpu-1"], &model);
    let _w2 = start_worker(&api2.url, &t.tokens["gpu-2"], &model);

    let c = client();
    let apis = [api1.url.as_str(), api2.url.as_str()];
    let ids: Vec<String> = (0..200)
        .map(|i| submit(&c, apis[i % 2], &t.key, &small(i as u64, 2, 64)))
        .collect();
    let finished = wait_all(
        &c,
        &[apis[1], apis[0]],
        &t.key,
        &ids,
        Duration::from_secs(600),
    );
    for (id, v) in ids.iter().zip(&finished) {
        assert_eq!(v["status"], "success", "{id}: {v}");
        assert_eq!(v["modelOutputs"]["images"].as_array().unwrap().len(), 1);
    }
    // Either node answers for a task posted on the other, with the same result.
    let a = get_task(&c, apis[0], &t.key, &ids[1]);
    let b = get_task(&c, apis[1], &t.key, &ids[1]);
    assert_eq!(a, b);
    // No task ran to completion twice: one accepted completion each, none dropped late.
    let logs = [api1.proc.log(), api2.proc.log()];
    for id in &ids {
        assert_eq!(
            completions(&logs, id),
            1,
            "{id} completed {} times",
            completions(&logs, id)
        );
    }
    assert!(!logs.iter().any(|l| l.contains("late result dropped")));
    let usage: Value = c
        .get(format!("{}/api/beta/organizations/acme/usage", apis[0]))
        .header("Salad-Api-Key", &t.key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let succeeded: u64 = usage["days"]
        .as_array()
        .unwrap_or_else(|| panic!("usage: {usage}"))
        .iter()
        .map(|d| d["tasksSucceeded"].as_u64().unwrap())
        .sum();
    assert_eq!(succeeded, 200, "{usage}");
}
