//! SIGKILL and SIGTERM of workers and API nodes mid-run: nothing accepted is lost.

use std::time::Duration;

use super::*;

#[test]
fn killed_workers_and_api_nodes_lose_nothing() {
    let db = Database::fresh(&admin_url());
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let t = tenant(&db.url, &["gpu-a", "gpu-b", "gpu-c"]);
    // A short lease, so a killed worker's task comes back within seconds.
    let mut api1 = start_api(&db.url, "3s");
    let api2 = start_api(&db.url, "3s");
    let c = client();

    // SIGKILL a worker in the middle of a task: the other worker finishes it, attempt 2.
    let mut a = start_worker(&api1.url, &t.tokens["gpu-a"], &model);
    let long = submit(&c, &api1.url, &t.key, &small(7, 150, 128));
    wait_running(&c, &api1.url, &t.key, &long);
    a.kill9();
    let mut b = start_worker(&api2.url, &t.tokens["gpu-b"], &model);
    let v = &wait_one(&c, &api2.url, &t.key, &long, Duration::from_secs(300));
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(db.attempt(&long), 2);

    // SIGKILL an API node: the other answers for every task, those posted to the dead one too.
    let ids: Vec<String> = (0..10)
        .map(|i| {
            let api = if i % 2 == 0 { &api1.url } else { &api2.url };
            submit(&c, api, &t.key, &small(100 + i, 2, 64))
        })
        .collect();
    api1.proc.kill9();
    let mut all = ids.clone();
    all.push(long.clone());
    for v in wait_all(&c, &[&api2.url], &t.key, &all, Duration::from_secs(300)) {
        assert_eq!(v["status"], "success", "{v}");
    }

    // SIGTERM: an idle worker exits at once; a busy one gives its task back (not counted as
    // a lost attempt) and exits; a worker started later finishes the task.
    b.sigterm();
    b.expect_clean_exit(Duration::from_secs(30));
    let mut c_worker = start_worker(&api2.url, &t.tokens["gpu-c"], &model);
    let last = submit(&c, &api2.url, &t.key, &small(9, 150, 128));
    wait_running(&c, &api2.url, &t.key, &last);
    c_worker.sigterm();
    c_worker.expect_clean_exit(Duration::from_secs(30));
    let v = get_task(&c, &api2.url, &t.key, &last);
    assert_eq!(v["status"], "pending", "{v}");
    assert!(v.get("progress").is_none(), "given back to the queue: {v}");
    let _again = start_worker(&api2.url, &t.tokens["gpu-c"], &model);
    let v = &wait_one(&c, &api2.url, &t.key, &last, Duration::from_secs(300));
    assert_eq!(v["status"], "success", "{v}");
}
