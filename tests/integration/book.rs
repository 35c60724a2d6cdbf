//! Books and shards through the real binary: several chapters in one run, `--shard K/N`,
//! and `report merge`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use plasma_batch::report::RunReport;
use plasma_batch::shard::Shard;
use predicates::prelude::*;

use crate::sim_support::get_json;
use crate::support::*;

pub fn bin() -> Command {
    let mut cmd = Command::cargo_bin("plasma-batch").unwrap();
    cmd.env_remove("PLASMA_COMFY_URL")
        .env_remove("PLASMA_COMFY_TOKEN")
        .env_remove("PLASMA_SHARD");
    cmd
}

/// Run `command` and read the JSON it prints; its exit code must be `code`.
pub fn json_of(command: &mut Command, code: i32) -> serde_json::Value {
    let output = command.output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Run `command`, which must exit with `code`, and read its stderr as one line: the
/// renderer wraps long messages (at spaces and hyphens) and frames them with `│`.
pub fn stderr_of(command: &mut Command, code: i32) -> String {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    let mut flat = String::new();
    for line in stderr.lines() {
        let line = line.trim().trim_start_matches(['│', '×']).trim();
        if !flat.is_empty() && !flat.ends_with('-') && !flat.ends_with('/') {
            flat.push(' ');
        }
        flat.push_str(line);
    }
    flat
}

/// Run `command`, which must exit with `code` and say what `says` expects on stderr (read
/// as one line, see [`stderr_of`]).
#[allow(
    clippy::needless_pass_by_value,
    reason = "the predicate is built in the call, for this check only"
)]
pub fn expect_stderr(command: &mut Command, code: i32, says: impl Predicate<str>) {
    let stderr = stderr_of(command, code);
    assert!(says.eval(&stderr), "{stderr}");
}

/// A book in `dir`: one manifest per `(chapter, pages, variants)`, small 3-step images,
/// `chNN.toml` each. `extra` is added to every page (e.g. a LoRA).
pub fn write_book(dir: &Path, chapters: &[(u16, u16, u32)], extra: &dyn Fn(u16) -> String) {
    std::fs::create_dir_all(dir).unwrap();
    for &(chapter, pages, variants) in chapters {
        let mut text = format!(
            "[chapter]\nnumber = {chapter}\ntitle = \"chapter {chapter}\"\nseed = {chapter}\n\n[defaults]\nworkflow = \"{}\"\nlora_workflow = \"{}\"\nsteps = 3\nwidth = 64\nheight = 96\nvariants = {variants}\n",
            repo().join("workflows/txt2img.json").display(),
            repo().join("workflows/txt2img-lora.json").display(),
        );
        for page in 1..=pages {
            let _ = write!(
                text,
                "\n[[pages]]\npage = {page}\nprompt = \"chapter {chapter}, panel {page}\"\n{}",
                extra(chapter)
            );
        }
        std::fs::write(dir.join(format!("ch{chapter:02}.toml")), text).unwrap();
    }
}

pub fn plain(_: u16) -> String {
    String::new()
}

/// The keys of a report's jobs that succeeded with an image on disk under `root`.
pub fn rendered_keys(report: &RunReport, root: &Path) -> BTreeSet<String> {
    report
        .jobs
        .iter()
        .filter(|j| j.status == plasma_batch::report::ReportStatus::Succeeded)
        .filter(|j| !j.images.is_empty() && j.images.iter().all(|i| root.join(&i.path).is_file()))
        .map(|j| j.key.clone())
        .collect()
}

/// `run --force --shard K/N` of `manifest` on the simulator into `out`: its report's path.
fn forced_shard_run(manifest: &Path, out: &Path, shard: &str) -> PathBuf {
    path_of(
        &json_of(
            bin()
                .arg("run")
                .arg(manifest)
                .args(["--sim", "--json", "--force", "--shard", shard, "--out"])
                .arg(out),
            0,
        )["report"],
    )
}

fn path_of(value: &serde_json::Value) -> PathBuf {
    PathBuf::from(value.as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_of_manifests_runs_as_one_book_on_one_socket_per_server() {
    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("book");
    write_book(&book, &[(1, 2, 1), (2, 1, 2), (3, 3, 1)], &plain);
    let out = dir.path().join("out");
    let sim = TestSim::start(&[]).await;
    let url = sim.url();
    let summary = {
        let (book, out) = (book.clone(), out.clone());
        tokio::task::spawn_blocking(move || {
            json_of(
                bin()
                    .arg("run")
                    .arg(&book)
                    .args(["--server", &url, "--json", "--out"])
                    .arg(&out),
                0,
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(summary["totals"]["jobs"], 7, "{summary:#}");
    assert_eq!(summary["totals"]["succeeded"], 7);
    let run_id = summary["run_id"].as_str().unwrap();

    // Each chapter's report and contact sheet, as a one-chapter run writes them.
    let chapters = summary["chapters"].as_array().unwrap();
    assert_eq!(chapters.len(), 3);
    for (entry, (chapter, jobs)) in chapters.iter().zip([(1u16, 2usize), (2, 2), (3, 3)]) {
        let report = RunReport::read(&path_of(&entry["report"])).unwrap();
        assert_eq!(report.chapter, chapter);
        assert_eq!(report.run_id, run_id);
        assert!(report.complete && report.shard.is_none());
        assert_eq!(rendered_keys(&report, &out).len(), jobs);
        assert!(path_of(&entry["contact_sheet"]).is_file());
        assert_eq!(
            path_of(&entry["report"]),
            out.join(format!("ch-{chapter:02}/reports/{run_id}.json"))
        );
    }

    // The book summary: chapters, totals, links that resolve.
    let book_json = path_of(&summary["summary"]);
    assert_eq!(book_json, out.join(format!("reports/{run_id}.json")));
    let book_summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&book_json).unwrap()).unwrap();
    assert_eq!(book_summary["kind"], "book");
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("docs/book.schema.json")).unwrap())
            .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema itself is valid");
    crate::report_schema::assert_valid(&validator, &book_summary);
    assert_eq!(book_summary["totals"]["succeeded"], 7);
    assert_eq!(book_summary["chapters"][1]["chapter"], 2);
    assert_eq!(book_summary["chapters"][1]["totals"]["jobs"], 2);
    let html = std::fs::read_to_string(path_of(&summary["summary_html"])).unwrap();
    for chapter in book_summary["chapters"].as_array().unwrap() {
        let sheet = chapter["contact_sheet"].as_str().unwrap();
        assert!(html.contains(&format!("href=\"../{sheet}\"")), "{html}");
        assert!(out.join(sheet).is_file());
    }

    // One socket for the whole book: every prompt of every chapter came with one client id.
    let (_, history) = get_json(&sim.url(), "/history").await;
    let clients: BTreeSet<String> = history
        .as_object()
        .unwrap()
        .values()
        .map(|entry| entry["prompt"][3]["client_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(history.as_object().unwrap().len(), 7);
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(sim.stats().posts_without_socket, 0);
}

#[test]
fn a_book_is_validated_whole_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("book");
    write_book(&book, &[(1, 1, 1), (2, 1, 1)], &plain);
    let bad = book.join("ch03.toml");
    std::fs::write(
        &bad,
        "[chapter]\nnumber = 3\nseed = 1\n\n[[pages]]\npage = 1\nstepz = 4\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    // Every problem of the book at once, with the file; nothing rendered, no folder made.
    expect_stderr(
        bin()
            .arg("run")
            .arg(&book)
            .args(["--sim", "--out"])
            .arg(&out),
        3,
        predicate::str::contains("ch03.toml").and(predicate::str::contains("stepz")),
    );
    assert!(!out.exists());

    // Two manifests of one chapter: both named.
    std::fs::remove_file(&bad).unwrap();
    let twin = book.join("twin.toml");
    std::fs::copy(book.join("ch01.toml"), &twin).unwrap();
    expect_stderr(
        bin()
            .arg("run")
            .arg(book.join("ch01.toml"))
            .arg(&twin)
            .args(["--sim", "--out"])
            .arg(&out),
        3,
        predicate::str::contains("ch01.toml")
            .and(predicate::str::contains("twin.toml"))
            .and(predicate::str::contains("are both chapter 1")),
    );
    assert!(!out.exists());
    // An empty folder is not a book.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    expect_stderr(
        bin().arg("run").arg(&empty).arg("--sim"),
        3,
        predicate::str::contains("holds no `*.toml` manifest"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_exit_code_over_the_book_a_failed_chapter_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("book");
    // Chapter 2's pages use a LoRA; the simulator's LoraLoader hangs, so they time out.
    write_book(&book, &[(1, 2, 1), (2, 1, 1)], &|chapter| {
        if chapter == 2 {
            "lora = { name = \"inkline_v2.safetensors\" }\n".to_owned()
        } else {
            String::new()
        }
    });
    let out = dir.path().join("out");
    let sim = TestSim::start(&["hang:LoraLoader"]).await;
    let url = sim.url();
    let summary = tokio::task::spawn_blocking(move || {
        json_of(
            bin()
                .arg("run")
                .arg(book.join("ch01.toml"))
                .arg(book.join("ch02.toml"))
                .args(["--server", &url, "--timeout", "1", "--json", "--out"])
                .arg(&out),
            1,
        )
    })
    .await
    .unwrap();
    assert_eq!(summary["exit_code"], 1);
    assert_eq!(
        summary["chapters"][0]["totals"]["succeeded"], 2,
        "{summary:#}"
    );
    assert_eq!(summary["chapters"][1]["totals"]["timed_out"], 1);
    assert_eq!(summary["totals"]["jobs"], 3);
}

#[test]
fn shards_split_a_chapter_by_key_and_merge_back_from_their_own_roots() {
    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("book");
    write_book(&book, &[(4, 5, 2)], &plain);
    let manifest = book.join("ch04.toml");
    let plan = plan(&manifest);
    let count = 3;
    let mut reports = Vec::new();
    let mut rendered = BTreeSet::new();
    for index in 0..count {
        let root = dir.path().join(format!("shard-{index}"));
        // K by flag, by PLASMA_SHARD, and from a variable named in the value.
        let mut cmd = bin();
        cmd.arg("run")
            .arg(&manifest)
            .args(["--sim", "--json", "--out"])
            .arg(&root);
        match index {
            0 => cmd.args(["--shard", "0/3"]),
            1 => cmd.env("PLASMA_SHARD", "1/3"),
            _ => cmd
                .args(["--shard", "JOB_COMPLETION_INDEX/3"])
                .env("JOB_COMPLETION_INDEX", "2"),
        };
        let summary = json_of(&mut cmd, 0);
        assert_eq!(summary["shard"], format!("{index}/{count}"));
        let path = path_of(&summary["report"]);
        let report = RunReport::read(&path).unwrap();
        let shard = report
            .shard
            .clone()
            .expect("a shard report names its shard");
        assert_eq!((shard.index, shard.count), (index, count));
        assert_eq!(shard.planned.len(), 10);
        // Exactly this shard's jobs, by the hash of the key.
        let expected: BTreeSet<String> = plan
            .jobs
            .iter()
            .filter(|j| Shard { index, count }.selects(&j.key))
            .map(|j| j.key.clone())
            .collect();
        let keys = rendered_keys(&report, &root);
        assert_eq!(keys, expected);
        assert!(rendered.is_disjoint(&keys));
        rendered.extend(keys);
        reports.push(path);
    }
    assert_eq!(rendered.len(), 10, "every job in some shard");

    let merged_dir = dir.path().join("merged");
    let merged = json_of(
        bin()
            .args(["report", "merge"])
            .args(&reports)
            .args(["--json", "--out"])
            .arg(&merged_dir),
        0,
    );
    assert_eq!(merged["totals"]["succeeded"], 10, "{merged:#}");
    let report = RunReport::read(&merged_dir.join("ch-04.json")).unwrap();
    assert!(report.check().is_empty(), "{:?}", report.check());
    // Shard reports and the merged report are run reports of the committed schema.
    let validator = crate::report_schema::validator();
    for path in reports.iter().chain([&merged_dir.join("ch-04.json")]) {
        let value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        crate::report_schema::assert_valid(&validator, &value);
    }
    assert_eq!(report.merged_from.len(), 3);
    let keys: Vec<&str> = report.jobs.iter().map(|j| j.key.as_str()).collect();
    let planned: Vec<&str> = plan.jobs.iter().map(|j| j.key.as_str()).collect();
    assert_eq!(keys, planned, "the merged report is in plan order");
    for (merged_job, planned_job) in report.jobs.iter().zip(&plan.jobs) {
        assert_eq!(merged_job.seed, planned_job.seed);
        assert_eq!(merged_job.hash, planned_job.hash);
    }
    // The contact sheet shows every image, each found under its own shard's root.
    let sheet = std::fs::read_to_string(merged_dir.join("ch-04.html")).unwrap();
    assert_eq!(
        sheet.matches("<img src=\"data:image/png;base64,").count(),
        10
    );
    assert!(!sheet.contains("no image"));
}

#[test]
fn a_merge_fails_naming_the_keys_of_a_missing_shard_or_of_a_shard_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("book");
    write_book(&book, &[(5, 4, 1)], &plain);
    let manifest = book.join("ch05.toml");
    let out = dir.path().join("out");
    let shard_run = |shard: &str| forced_shard_run(&manifest, &out, shard);
    let first = shard_run("0/2");
    let second = shard_run("1/2");
    let again = shard_run("1/2");
    let plan = plan(&manifest);
    let keys_of = |index| -> Vec<String> {
        plan.jobs
            .iter()
            .filter(|j| Shard { index, count: 2 }.selects(&j.key))
            .map(|j| j.key.clone())
            .collect()
    };
    let merged = dir.path().join("merged");
    // Shard 1 missing: its keys are named, with the shard to run again; nothing written.
    let mut missing = predicate::str::contains("in no report")
        .and(predicate::str::contains("--shard 1/2"))
        .boxed();
    for key in keys_of(1) {
        missing = missing
            .and(predicate::str::contains(format!("{key} (shard 1/2)")))
            .boxed();
    }
    expect_stderr(
        bin()
            .args(["report", "merge"])
            .arg(&first)
            .arg("--out")
            .arg(&merged),
        1,
        missing,
    );
    assert!(!merged.exists());
    // Shard 1 twice: its keys are named as rendered by two shards.
    let mut twice = predicate::str::contains("rendered by two shards").boxed();
    for key in keys_of(1) {
        twice = twice.and(predicate::str::contains(key)).boxed();
    }
    expect_stderr(
        bin()
            .args(["report", "merge"])
            .args([&first, &second, &again])
            .arg("--out")
            .arg(&merged),
        1,
        twice,
    );
    assert!(!merged.exists());
    // The folder that keeps every run's reports merges with --newest: the second 1/2 wins.
    let reports = out.join("ch-05/reports");
    let merged_json = json_of(
        bin()
            .args(["report", "merge"])
            .arg(&reports)
            .args(["--newest", "--json", "--out"])
            .arg(&merged),
        0,
    );
    assert_eq!(merged_json["totals"]["succeeded"], 4, "{merged_json:#}");
    let report = RunReport::read(&merged.join("ch-05.json")).unwrap();
    let again_id = RunReport::read(&again).unwrap().run_id;
    assert!(report.merged_from.iter().any(|m| m.run_id == again_id));
}

#[test]
fn reports_of_other_splits_or_of_whole_runs_do_not_merge() {
    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("book");
    write_book(&book, &[(6, 2, 1)], &plain);
    let manifest = book.join("ch06.toml");
    let out = dir.path().join("out");
    let shard_run = |shard: &str| forced_shard_run(&manifest, &out, shard);
    let first = shard_run("0/2");
    // Shards of different splits do not merge: an input problem naming both.
    let of_three = shard_run("2/3");
    expect_stderr(
        bin()
            .args(["report", "merge"])
            .args([&first, &of_three])
            .arg("--out")
            .arg(dir.path().join("m3")),
        3,
        predicate::str::contains("is shard 0/2 but")
            .and(predicate::str::contains("is shard 2/3"))
            .and(predicate::str::contains("different splits")),
    );
    // A report that is not a shard's is refused as an input problem.
    let whole = json_of(
        bin()
            .arg("run")
            .arg(&manifest)
            .args(["--sim", "--json", "--out"])
            .arg(dir.path().join("whole")),
        0,
    );
    expect_stderr(
        bin()
            .args(["report", "merge"])
            .arg(path_of(&whole["report"]))
            .arg("--out")
            .arg(dir.path().join("m2")),
        3,
        predicate::str::contains("is not a shard report"),
    );
    assert!(!dir.path().join("m2").exists() && !dir.path().join("m3").exists());
}

#[test]
fn a_shard_that_is_not_k_of_n_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 1, 1, "");
    for (shard, says) in [
        ("4/4", "counted from 0, so K must be 0 to 3"),
        ("1", "is not K/N"),
        ("JOB_COMPLETION_INDEX/2", "JOB_COMPLETION_INDEX is not set"),
    ] {
        expect_stderr(
            bin()
                .arg("run")
                .arg(&manifest)
                .args(["--sim", "--shard", shard, "--out"])
                .arg(dir.path().join("out"))
                .env_remove("JOB_COMPLETION_INDEX"),
            2,
            predicate::str::contains(says),
        );
    }
    assert!(!dir.path().join("out").exists());
}

#[test]
fn only_selects_across_the_book_and_a_chapter_it_leaves_out_gets_no_report() {
    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("book");
    write_book(&book, &[(1, 2, 1), (2, 2, 1)], &plain);
    let out = dir.path().join("out");
    let summary = json_of(
        bin()
            .arg("run")
            .arg(&book)
            .args(["--sim", "--json", "--only", "ch02_p002", "--out"])
            .arg(&out),
        0,
    );
    assert_eq!(summary["totals"]["jobs"], 1, "{summary:#}");
    assert_eq!(summary["chapters"].as_array().unwrap().len(), 1);
    let report = RunReport::read(&path_of(&summary["chapters"][0]["report"])).unwrap();
    assert_eq!(report.chapter, 2);
    assert_eq!(
        rendered_keys(&report, &out),
        BTreeSet::from(["ch02_p002_s1".to_owned()])
    );
    assert!(!out.join("ch-01").exists());
    // A selector no chapter of the book has is a usage error, as for one chapter.
    expect_stderr(
        bin()
            .arg("run")
            .arg(&book)
            .args(["--sim", "--only", "ch03", "--out"])
            .arg(&out),
        2,
        predicate::str::contains("--only ch03 matches no job"),
    );
}
