//! Sweeps through the real binary on the built-in simulator: `plan`, `run` (the product
//! rendered, keys stable across runs), the report, the contact sheet's grids and `rerun`.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

use crate::cli::{bin, json_of};
use crate::support::repo;

/// Run `command`, which must succeed, and return its stdout.
fn stdout_of(command: &mut Command) -> String {
    String::from_utf8(command.assert().success().get_output().stdout.clone()).unwrap()
}

/// Chapter 5: page 1 swept over `cfgs` x two samplers x two step counts, page 2 not swept.
fn manifest(dir: &Path, cfgs: &str) -> PathBuf {
    let text = format!(
        "[chapter]\nnumber = 5\n\n[defaults]\nworkflow = \"{}\"\nwidth = 64\nheight = 64\n\n\
         [[pages]]\npage = 1\nprompt = \"a lighthouse at dusk\"\n\
         sweep = {{ cfg = [{cfgs}], sampler = [\"euler\", \"dpmpp_2m\"], steps = [2, 3] }}\n\n\
         [[pages]]\npage = 2\nprompt = \"the keeper on the stairs\"\nsteps = 2\n",
        repo().join("workflows/txt2img.json").display()
    );
    let path = dir.join("sweep.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(manifest: &Path, out: &Path) -> Value {
    json_of(
        bin()
            .arg("run")
            .arg(manifest)
            .args(["--sim", "--json", "--out"])
            .arg(out),
    )
}

/// Run the manifest, all `succeeded` jobs succeeding: the summary, the report's path and the
/// report, checked against its schema.
fn run_all(manifest: &Path, out: &Path, succeeded: u64) -> (Value, String, Value) {
    let summary = run(manifest, out);
    assert_eq!(summary["totals"]["succeeded"], succeeded, "{summary:#}");
    let path = summary["report"].as_str().unwrap().to_owned();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    crate::report_schema::validator()
        .validate(&report)
        .unwrap_or_else(|e| panic!("the report does not match its schema: {e}"));
    (summary, path, report)
}

/// `rerun --job selector` of the report reproduces `count` jobs byte for byte.
fn rerun_reproduces(report: &str, selector: &str, count: u64) {
    let rerun = json_of(bin().args(["rerun", report, "--sim", "--json", "--job", selector]));
    assert_eq!(rerun["identical"], count, "{rerun:#}");
    assert_eq!(rerun["different"], 0);
}

fn keys(jobs: &Value) -> Vec<&str> {
    jobs.as_array()
        .unwrap()
        .iter()
        .map(|j| j["key"].as_str().unwrap())
        .collect()
}

#[test]
fn a_swept_page_renders_every_point_through_plan_run_report_sheet_and_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path(), "5, 7.5");

    // plan: every point, last axis fastest, keys naming the axis values.
    let plan = json_of(bin().arg("plan").arg(&manifest).arg("--json"));
    let expected = [
        "ch05_p001_cfg=5.0_sampler=euler_steps=2_s1",
        "ch05_p001_cfg=5.0_sampler=euler_steps=3_s1",
        "ch05_p001_cfg=5.0_sampler=dpmpp-2m_steps=2_s1",
        "ch05_p001_cfg=5.0_sampler=dpmpp-2m_steps=3_s1",
        "ch05_p001_cfg=7.5_sampler=euler_steps=2_s1",
        "ch05_p001_cfg=7.5_sampler=euler_steps=3_s1",
        "ch05_p001_cfg=7.5_sampler=dpmpp-2m_steps=2_s1",
        "ch05_p001_cfg=7.5_sampler=dpmpp-2m_steps=3_s1",
        "ch05_p002_s1",
    ];
    assert_eq!(keys(&plan["jobs"]), expected);
    let third = &plan["jobs"][2]["params"];
    assert_eq!(
        third["sweep"],
        serde_json::json!([
            { "axis": "cfg", "value": 5.0 },
            { "axis": "sampler", "value": "dpmpp_2m" },
            { "axis": "steps", "value": 2 },
        ])
    );
    assert_eq!(
        (&third["cfg"], &third["sampler"], &third["steps"]),
        (
            &serde_json::json!(5.0),
            &serde_json::json!("dpmpp_2m"),
            &serde_json::json!(2)
        )
    );
    assert!(plan["jobs"][8]["params"].get("sweep").is_none());
    // Every point of a page has the page's seeds, so the points differ only by their axes.
    let seeds: Vec<&Value> = (0..8).map(|i| &plan["jobs"][i]["seed"]).collect();
    assert!(seeds.iter().all(|s| *s == seeds[0]), "{seeds:?}");
    let table = stdout_of(bin().arg("plan").arg(&manifest));
    assert!(
        table.contains(
            "page 1 sweeps cfg [5.0, 7.5] x sampler [euler, dpmpp_2m] x steps [2, 3]: 8 points, 8 jobs\n"
        ),
        "{table}"
    );

    // run: the product rendered, each with its own values sent to the server.
    let out = dir.path().join("out");
    let (summary, report_path, report) = run_all(&manifest, &out, 9);
    assert_eq!(keys(&report["jobs"]), expected);
    let mut images = Vec::new();
    for job in report["jobs"].as_array().unwrap() {
        let sampler = &job["prompt"]["3"]["inputs"];
        for axis in job["params"]["sweep"].as_array().into_iter().flatten() {
            let input = match axis["axis"].as_str().unwrap() {
                "sampler" => "sampler_name",
                other => other,
            };
            assert_eq!(sampler[input], axis["value"], "{}", job["key"]);
        }
        images.push(job["images"][0]["path"].as_str().unwrap().to_owned());
    }
    images.sort();
    images.dedup();
    assert_eq!(images.len(), 9, "one image file per job: {images:?}");

    let sheet = std::fs::read_to_string(summary["contact_sheet"].as_str().unwrap()).unwrap();
    check_grids(&sheet);
    assert!(sheet.contains("<span class=\"key\">ch05_p002_s1</span>"));

    // The same manifest again renders nothing: every swept key is the one the ledger has.
    let again = run(&manifest, &out);
    assert_eq!(
        (&again["totals"]["skipped"], &again["totals"]["succeeded"]),
        (&serde_json::json!(9), &serde_json::json!(0)),
        "{again:#}"
    );

    // rerun of one sweep point's jobs (selected by their key's point part) reproduces them.
    rerun_reproduces(&report_path, "ch05_p001_cfg=7.5_sampler=euler", 2);
}

#[test]
fn a_value_added_to_an_axis_renders_only_the_new_points() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let first = run(&manifest(dir.path(), "5, 7.5"), &out);
    assert_eq!(first["totals"]["succeeded"], 9);
    let more = run(&manifest(dir.path(), "5, 7.5, 9"), &out);
    assert_eq!(
        (&more["totals"]["skipped"], &more["totals"]["succeeded"]),
        (&serde_json::json!(9), &serde_json::json!(4)),
        "{more:#}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(more["report"].as_str().unwrap()).unwrap())
            .unwrap();
    let rendered: Vec<&str> = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["status"] == "succeeded")
        .map(|j| j["key"].as_str().unwrap())
        .collect();
    assert!(
        rendered.iter().all(|k| k.starts_with("ch05_p001_cfg=9.0_")),
        "{rendered:?}"
    );
}

#[test]
fn only_and_rerun_job_select_by_any_axis_values_of_a_point() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path(), "5, 7.5");
    let out = dir.path().join("out");
    // `sampler` is the second axis: its row is every cfg and step count of that sampler.
    let summary = json_of(
        bin()
            .arg("run")
            .arg(&manifest)
            .args([
                "--sim",
                "--json",
                "--only",
                "ch05_p001_sampler=dpmpp-2m",
                "--out",
            ])
            .arg(&out),
    );
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(summary["report"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        keys(&report["jobs"]),
        [
            "ch05_p001_cfg=5.0_sampler=dpmpp-2m_steps=2_s1",
            "ch05_p001_cfg=5.0_sampler=dpmpp-2m_steps=3_s1",
            "ch05_p001_cfg=7.5_sampler=dpmpp-2m_steps=2_s1",
            "ch05_p001_cfg=7.5_sampler=dpmpp-2m_steps=3_s1",
        ]
    );
    assert_eq!(summary["totals"]["succeeded"], 4, "{summary:#}");
    // Parts in any order, with a variant; a value as the key does not write it selects none.
    let path = summary["report"].as_str().unwrap();
    rerun_reproduces(path, "ch05_p001_steps=3_cfg=7.5_s1", 1);
    bin()
        .args(["rerun", path, "--sim", "--job", "ch05_p001_steps=3_cfg=7"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("matches no job"));
}

/// The contact sheet shows page 1 as one grid per step count, cfg across, sampler down, each
/// cell holding its point's one card.
fn check_grids(sheet: &str) {
    let grids: Vec<&str> = sheet.split("<table class=\"sweep\">").skip(1).collect();
    assert_eq!(grids.len(), 2, "{sheet}");
    for (grid, steps) in grids.iter().zip([2, 3]) {
        let grid = &grid[..grid.find("</table>").unwrap()];
        assert!(
            grid.starts_with(&format!("<caption>steps={steps}</caption>")),
            "{grid}"
        );
        assert!(grid.contains(
            "<th class=\"corner\">sampler \\ cfg</th><th scope=\"col\">cfg=5.0</th><th scope=\"col\">cfg=7.5</th>"
        ));
        let rows: Vec<&str> = grid.split("<tr><th scope=\"row\">").skip(1).collect();
        assert_eq!(rows.len(), 2, "{grid}");
        for (row, sampler) in rows.iter().zip(["euler", "dpmpp_2m"]) {
            assert!(
                row.starts_with(&format!("sampler={sampler}</th>")),
                "{}",
                &row[..80]
            );
            let cells: Vec<&str> = row.split("<td ").skip(1).collect();
            assert_eq!(cells.len(), 2);
            for (cell, cfg) in cells.iter().zip(["5.0", "7.5"]) {
                let key = format!(
                    "ch05_p001_cfg={cfg}_sampler={}_steps={steps}_s1",
                    sampler.replace('_', "-")
                );
                assert!(
                    cell.starts_with(&format!(
                        "data-x=\"cfg={cfg}\" data-y=\"sampler={sampler}\">"
                    )),
                    "{cell}"
                );
                assert_eq!(cell.matches("class=\"card\"").count(), 1, "{cell}");
                // The card writes the value as the axis and the key do (`5.0`, not `5`).
                assert!(cell.contains(&format!(" · cfg {cfg} · ")), "{cell}");
                assert!(
                    cell.contains(&format!("<span class=\"key\">{key}</span>")),
                    "{cell}"
                );
                assert!(
                    cell.contains("data:image/png;base64,"),
                    "{key} has no thumbnail"
                );
            }
        }
    }
}

#[test]
fn a_one_axis_sweep_is_one_row_of_cells_each_with_the_points_variants() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("one.toml");
    let text = format!(
        "[chapter]\nnumber = 6\n\n[defaults]\nworkflow = \"{}\"\nwidth = 64\nheight = 64\nsteps = 2\n\
         sweep = {{ scheduler = [\"karras\", \"normal\"] }}\n\n\
         [[pages]]\npage = 4\nprompt = \"rain on the salt road\"\nvariants = 2\n",
        repo().join("workflows/txt2img.json").display()
    );
    std::fs::write(&manifest, text).unwrap();
    let summary = run(&manifest, &dir.path().join("out"));
    assert_eq!(summary["totals"]["succeeded"], 4, "{summary:#}");
    let sheet = std::fs::read_to_string(summary["contact_sheet"].as_str().unwrap()).unwrap();
    let start = sheet.find("<table class=\"sweep\">").expect("a grid");
    let grid = &sheet[start..start + sheet[start..].find("</table>").unwrap()];
    assert!(!grid.contains("<caption>") && !grid.contains("scope=\"row\""));
    assert!(grid.contains(
        "<thead><tr><th scope=\"col\">scheduler=karras</th><th scope=\"col\">scheduler=normal</th></tr></thead>"
    ));
    assert_eq!(
        grid.matches("<tr>").count(),
        2,
        "a header row and one row of cells"
    );
    for scheduler in ["karras", "normal"] {
        let at = grid
            .find(&format!("<td data-x=\"scheduler={scheduler}\">"))
            .unwrap();
        let cell = &grid[at..at + grid[at..].find("</td>").unwrap()];
        for variant in 1..=2 {
            let key = format!("ch06_p004_scheduler={scheduler}_s{variant}");
            assert!(cell.contains(&format!(">{key}<")), "{key} not in its cell");
        }
        assert_eq!(cell.matches("class=\"card\"").count(), 2);
    }
}

/// The variables fixture with page 1 swept over two of its variables.
fn swept_vars_manifest(dir: &Path) -> PathBuf {
    let template = repo().join("tests/fixtures/workflows/good/txt2img-vars.json");
    let text = std::fs::read_to_string(repo().join("tests/fixtures/manifests/good/vars.toml"))
        .unwrap()
        .replace(
            "\"../../workflows/good/txt2img-vars.json\"",
            &format!("\"{}\"", template.display()),
        )
        .replace(
            "prompt = \"a salt flat at dawn\"\n",
            "prompt = \"a salt flat at dawn\"\nsweep = { denoise = [0.3, 1], style = [\"ink wash\", \"charcoal\"] }\n",
        );
    let path = dir.join("vars-sweep.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_variable_axis_sets_the_variable_each_point_sends_and_rerun_reproduces_it() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = swept_vars_manifest(dir.path());
    let out = dir.path().join("out");
    let (_, report_path, report) = run_all(&manifest, &out, 6);
    let jobs = &report["jobs"];
    assert_eq!(
        keys(jobs)[..4],
        [
            "ch03_p001_denoise=0.3_style=ink-wash_s1",
            "ch03_p001_denoise=0.3_style=charcoal_s1",
            "ch03_p001_denoise=1.0_style=ink-wash_s1",
            "ch03_p001_denoise=1.0_style=charcoal_s1",
        ]
    );
    for job in jobs.as_array().unwrap().iter().take(4) {
        let (denoise, style) = (
            &job["params"]["sweep"][0]["value"],
            &job["params"]["sweep"][1]["value"],
        );
        assert!(
            denoise.is_f64(),
            "a float variable's axis is floats: {denoise}"
        );
        assert_eq!(&job["params"]["vars"]["denoise"], denoise);
        assert_eq!(&job["params"]["vars"]["style"], style);
        let sent = &job["prompt"];
        assert_eq!(&sent["3"]["inputs"]["denoise"], denoise);
        assert_eq!(
            sent["6"]["inputs"]["text"],
            format!(
                "a salt flat at dawn, in the style of {}",
                style.as_str().unwrap()
            )
        );
    }
    // Page 2 keeps its own values: the sweep is page 1's.
    assert_eq!(jobs[4]["key"], "ch03_p002_s1");
    assert_eq!(jobs[4]["params"]["vars"]["style"], "charcoal");

    rerun_reproduces(&report_path, "ch03_p001_denoise=1.0", 2);
}

#[test]
fn the_plan_line_of_a_sweep_stays_one_short_line_whatever_the_values() {
    let dir = tempfile::tempdir().unwrap();
    let long = "y".repeat(100_000);
    let manifest = swept_vars_manifest(dir.path());
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "style = [\"ink wash\", \"charcoal\"]",
        &format!("style = [\"two\\nlines\", \"{long}\"]"),
    );
    std::fs::write(&manifest, text).unwrap();
    let table = stdout_of(bin().arg("plan").arg(&manifest));
    let line = table
        .lines()
        .find(|l| l.starts_with("page 1 sweeps"))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(
        line,
        format!(
            "page 1 sweeps denoise [0.3, 1.0] x style [two\\nlines, {}…]: 4 points, 4 jobs",
            &long[..40]
        )
    );
}
