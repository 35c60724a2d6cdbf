//! The examples in `examples/ci` and `examples/k8s`, read as YAML and run locally: N
//! `run --shard K/N` processes at once, then `report merge`, whose reports must hold the
//! job set of a single run of the whole book.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process};

use plasma_batch::report::RunReport;
use serde::Deserialize;
use serde_json::Value;

use crate::book::{bin, json_of, plain, rendered_keys, write_book};
use crate::support::*;

/// The book the examples render: 2 chapters, 10 jobs.
const BOOK: &[(u16, u16, u32)] = &[(1, 3, 2), (2, 4, 1)];

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

/// The folder the binary is in, for `PATH`: the examples call it `plasma-batch`.
fn path_with_binary() -> String {
    let binary = assert_cmd::cargo::cargo_bin("plasma-batch");
    let dir = binary.parent().unwrap().display().to_string();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

/// Whether `run` has the flag (`--junit` comes with the CI report formats).
fn run_has_flag(flag: &str) -> bool {
    let help = bin().args(["run", "--help"]).output().unwrap();
    String::from_utf8_lossy(&help.stdout).contains(flag)
}

/// A command line with `--flag VALUE` taken out.
fn without_flag(command: &str, flag: &str) -> String {
    let mut words = command.split_whitespace();
    let mut kept = Vec::new();
    while let Some(word) = words.next() {
        if word == flag {
            words.next();
        } else {
            kept.push(word);
        }
    }
    kept.join(" ")
}

fn wait_all(children: Vec<(String, Child)>) {
    for (what, child) in children {
        let output = child.wait_with_output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{what}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A single run of the whole book (the reference): per chapter, key -> job hash.
fn single_run(dir: &Path) -> BTreeMap<u16, BTreeMap<String, String>> {
    let book = dir.join("single/book");
    write_book(&book, BOOK, &plain);
    let out = dir.join("single/out");
    let summary = json_of(
        bin()
            .arg("run")
            .arg(&book)
            .args(["--sim", "--json", "--out"])
            .arg(&out),
        0,
    );
    let mut jobs = BTreeMap::new();
    for chapter in summary["chapters"].as_array().unwrap() {
        let report = RunReport::read(Path::new(chapter["report"].as_str().unwrap())).unwrap();
        assert_eq!(rendered_keys(&report, &out).len(), report.jobs.len());
        jobs.insert(report.chapter, hashes(&report));
    }
    assert_eq!(jobs.values().map(BTreeMap::len).sum::<usize>(), 10);
    jobs
}

fn hashes(report: &RunReport) -> BTreeMap<String, String> {
    report
        .jobs
        .iter()
        .map(|j| (j.key.clone(), j.hash.to_string()))
        .collect()
}

/// The merged reports in `merged` (`ch-XX.json`), checked against the single run: the same
/// jobs with the same hashes, each rendered, with its image under `root_of(report)`.
fn check_merged(
    merged: &Path,
    single: &BTreeMap<u16, BTreeMap<String, String>>,
    shards: usize,
    root_of: &dyn Fn(&RunReport, &str) -> PathBuf,
) {
    for (chapter, jobs) in single {
        let report = RunReport::read(&merged.join(format!("ch-{chapter:02}.json"))).unwrap();
        assert!(report.check().is_empty(), "{:?}", report.check());
        assert_eq!(&hashes(&report), jobs, "chapter {chapter}");
        assert_eq!(report.merged_from.len(), shards);
        assert_eq!(report.totals.succeeded + report.totals.skipped, jobs.len());
        for job in &report.jobs {
            assert!(!job.images.is_empty(), "{}", job.key);
            for image in &job.images {
                assert!(root_of(&report, &job.key).join(&image.path).is_file());
            }
        }
        let sheet = std::fs::read_to_string(merged.join(format!("ch-{chapter:02}.html"))).unwrap();
        assert_eq!(
            sheet.matches("<img src=\"data:image/png;base64,").count(),
            jobs.len()
        );
    }
}

/// What the test takes from `examples/ci/nightly.yml`, each part checked on the way.
struct Ci {
    matrix: Vec<u64>,
    render_cmd: String,
    junit: bool,
    upload: Value,
    download: Value,
    merge_cmd: String,
    sheets: String,
    junit_paths: String,
}

fn read_ci_workflow() -> Ci {
    let docs = yaml_documents(&repo().join("examples/ci/nightly.yml"));
    let workflow = &docs[0];
    assert!(
        workflow["on"]["schedule"][0]["cron"].is_string(),
        "a nightly schedule"
    );
    let render = &workflow["jobs"]["render"];
    let matrix: Vec<u64> = render["strategy"]["matrix"]["shard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_u64().unwrap())
        .collect();
    let count = matrix.len();
    assert_eq!(matrix, (0..count as u64).collect::<Vec<_>>());
    let step = |job: &Value, id: &str| -> Value {
        job["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no step {id}"))
            .clone()
    };
    let uses = |job: &Value, action: &str| -> Value {
        job["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["uses"].as_str().is_some_and(|u| u.starts_with(action)))
            .unwrap_or_else(|| panic!("no step uses {action}"))
            .clone()
    };
    let mut render_cmd = step(render, "render")["run"].as_str().unwrap().to_owned();
    assert!(render_cmd.contains("--shard ${{ matrix.shard }}/${{ strategy.job-total }}"));
    let junit = render_cmd.contains("--junit");
    if junit && !run_has_flag("--junit") {
        render_cmd = without_flag(&render_cmd, "--junit");
    }
    let upload = uses(render, "actions/upload-artifact")["with"].clone();
    let merge = &workflow["jobs"]["merge"];
    assert_eq!(merge["needs"], "render");
    let download = uses(merge, "actions/download-artifact")["with"].clone();
    assert_eq!(download["pattern"], "shard-*");
    let merge_cmd = step(merge, "merge")["run"].as_str().unwrap().to_owned();
    let sheets = uses(merge, "actions/upload-artifact")["with"]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    let junit_paths = uses(merge, "mikepenz/action-junit-report")["with"]["report_paths"]
        .as_str()
        .unwrap()
        .to_owned();
    Ci {
        matrix,
        render_cmd,
        junit,
        upload,
        download,
        merge_cmd,
        sheets,
        junit_paths,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ci_workflow_renders_shards_on_separate_runners_and_merges_their_artifacts() {
    let Ci {
        matrix,
        render_cmd,
        junit,
        upload,
        download,
        merge_cmd,
        sheets,
        junit_paths,
    } = read_ci_workflow();
    let count = matrix.len();
    let dir = tempfile::tempdir().unwrap();
    let single = single_run(dir.path());
    // Two servers for all shards; which one renders a job is the executor's choice.
    let a = TestSim::start(&[]).await.idle_ok();
    let b = TestSim::start(&[]).await.idle_ok();
    let servers = format!("{},{}", a.url(), b.url());
    // Each runner: a checkout with the book, its shard's step, at once.
    let children: Vec<(String, Child)> = matrix
        .iter()
        .map(|k| {
            let runner = dir.path().join(format!("runner-{k}"));
            write_book(&runner.join("manifests/book"), BOOK, &plain);
            let command = render_cmd
                .replace("${{ matrix.shard }}", &k.to_string())
                .replace("${{ strategy.job-total }}", &count.to_string());
            let child = Process::new("bash")
                .args(["-euc", &command])
                .current_dir(&runner)
                .env("PATH", path_with_binary())
                .env("PLASMA_COMFY_URL", &servers)
                .env_remove("PLASMA_SHARD")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (command, child)
        })
        .collect();
    tokio::task::spawn_blocking(move || wait_all(children))
        .await
        .unwrap();
    // The artifacts: each runner's upload path, downloaded into `<path>/<name>/`.
    let merger = dir.path().join("merger");
    for k in &matrix {
        let name = upload["name"]
            .as_str()
            .unwrap()
            .replace("${{ matrix.shard }}", &k.to_string());
        let from = dir
            .path()
            .join(format!("runner-{k}"))
            .join(upload["path"].as_str().unwrap());
        copy_tree(
            &from,
            &merger.join(download["path"].as_str().unwrap()).join(name),
        );
    }
    let output = Process::new("bash")
        .args(["-euc", &merge_cmd])
        .current_dir(&merger)
        .env("PATH", path_with_binary())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{merge_cmd}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shards_dir = merger.join(download["path"].as_str().unwrap());
    check_merged(&merger.join(&sheets), &single, count, &|_, key| {
        let k = plasma_batch::shard::Shard::of_key(key, count as u32);
        shards_dir.join(format!("shard-{k}"))
    });
    assert_eq!(a.prompts_posted() + b.prompts_posted(), 10, "each job once");
    if junit && run_has_flag("--junit") {
        let pattern = junit_paths.replace("shards/*/", "");
        for k in &matrix {
            assert!(
                shards_dir
                    .join(format!("shard-{k}"))
                    .join(&pattern)
                    .is_file()
            );
        }
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexed_job_renders_shards_into_one_shared_root_and_merges_them() {
    let docs = yaml_documents(&repo().join("examples/k8s/indexed-job.yaml"));
    let kind = |doc: &Value, name: &str| doc["kind"] == name;
    let claim = docs
        .iter()
        .find(|d| kind(d, "PersistentVolumeClaim"))
        .expect("a shared volume");
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteMany");
    let jobs: Vec<&Value> = docs.iter().filter(|d| kind(d, "Job")).collect();
    let render = jobs
        .iter()
        .find(|j| j["spec"]["completionMode"] == "Indexed")
        .expect("an Indexed Job");
    let merge = jobs
        .iter()
        .find(|j| j["spec"]["completionMode"].is_null())
        .expect("a merge Job");
    let count = render["spec"]["completions"].as_u64().unwrap();
    assert_eq!(render["spec"]["parallelism"].as_u64(), Some(count));
    // Both mount the claim at one path; that path is a folder of this test.
    let mount = |job: &Value| -> (String, Vec<String>) {
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
            claim["metadata"]["name"]
        );
        let container = &pod["containers"][0];
        let args = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        (
            container["volumeMounts"][0]["mountPath"]
                .as_str()
                .unwrap()
                .to_owned(),
            args,
        )
    };
    let (mount_path, render_args) = mount(render);
    let (merge_mount, merge_args) = mount(merge);
    assert_eq!(mount_path, merge_mount);

    let dir = tempfile::tempdir().unwrap();
    let single = single_run(dir.path());
    let volume = dir.path().join("volume");
    let local = |args: &[String]| -> Vec<String> {
        args.iter()
            .map(|a| match a.strip_prefix(&mount_path) {
                Some(rest) => format!("{}{rest}", volume.display()),
                None => a.clone(),
            })
            .collect()
    };
    write_book(&volume.join("manifests"), BOOK, &plain);
    // Two servers for all shards; which one renders a job is the executor's choice.
    let a = TestSim::start(&[]).await.idle_ok();
    let b = TestSim::start(&[]).await.idle_ok();
    let servers = format!("{},{}", a.url(), b.url());
    let run_pods = |round: u64| {
        (0..count)
            .map(|index| {
                let child = Process::new(assert_cmd::cargo::cargo_bin("plasma-batch"))
                    .args(local(&render_args))
                    .env("JOB_COMPLETION_INDEX", index.to_string())
                    .env("PLASMA_COMFY_URL", &servers)
                    .env_remove("PLASMA_SHARD")
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                (format!("round {round}, pod {index}"), child)
            })
            .collect::<Vec<_>>()
    };
    // Two nights: the second finds every image and skips; the volume keeps both reports.
    for round in 0..2 {
        let pods = run_pods(round);
        tokio::task::spawn_blocking(move || wait_all(pods))
            .await
            .unwrap();
        assert_eq!(a.prompts_posted() + b.prompts_posted(), 10, "each job once");
    }
    let output = bin().args(local(&merge_args)).output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let merged = PathBuf::from(local(&merge_args).last().unwrap());
    let root = volume.join("out");
    check_merged(&merged, &single, count as usize, &|_, _| root.clone());
    // One root, written by every pod at once: each image once, under its own name.
    let images: BTreeSet<String> = files_under(&root)
        .into_iter()
        .filter(|f| f.contains("/raw/comfyui/") && has_extension(f, "png"))
        .collect();
    assert_eq!(images.len(), 10, "{images:?}");
    check_shared_ledgers(&root, &single, count as u32);
    a.stop().await;
    b.stop().await;
}

/// Each chapter's ledger in the shared `root` took the records of every pod of the first
/// night, whole lines, interleaved: one `submitted` per job of the chapter, from as many runs
/// as pods had jobs of it.
fn check_shared_ledgers(root: &Path, single: &BTreeMap<u16, BTreeMap<String, String>>, count: u32) {
    for (chapter, jobs) in single {
        let ledger =
            std::fs::read_to_string(root.join(format!("ch-{chapter:02}/ledger.jsonl"))).unwrap();
        let records: Vec<Value> = ledger
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        let submitted: Vec<&Value> = records
            .iter()
            .filter(|r| r["event"] == "submitted")
            .collect();
        let keys: BTreeSet<&str> = submitted
            .iter()
            .map(|r| r["key"].as_str().unwrap())
            .collect();
        assert_eq!(submitted.len(), jobs.len());
        assert_eq!(keys, jobs.keys().map(String::as_str).collect());
        let runs: BTreeSet<&str> = submitted
            .iter()
            .map(|r| r["run_id"].as_str().unwrap())
            .collect();
        let pods: BTreeSet<u32> = jobs
            .keys()
            .map(|k| plasma_batch::shard::Shard::of_key(k, count))
            .collect();
        assert_eq!(runs.len(), pods.len(), "chapter {chapter}");
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
