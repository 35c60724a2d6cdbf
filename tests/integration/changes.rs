//! What changed since the last run: each job of a report is new, unchanged or changed (with
//! the parameters that changed), and the contact sheet shows a changed page's previous image
//! beside the new one. Through the real binary on the built-in simulator.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::ci_formats::bin;
use crate::support::*;

/// Chapter 7 with one page per `(prompt, steps)`.
fn manifest(dir: &Path, pages: &[(&str, u32)]) -> PathBuf {
    let mut text = format!(
        "[chapter]\nnumber = 7\nseed = 11\n\n[defaults]\nworkflow = \"{}\"\nwidth = 64\nheight = 96\n",
        repo().join("workflows/txt2img.json").display()
    );
    for (n, (prompt, steps)) in pages.iter().enumerate() {
        let _ = write!(
            text,
            "\n[[pages]]\npage = {}\nprompt = \"{prompt}\"\nsteps = {steps}\n",
            n + 1
        );
    }
    let path = dir.join("nightly.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `run --sim --json`, which must exit 0; its report and contact sheet.
fn run_sim(manifest: &Path, out: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    let output = bin()
        .arg("run")
        .arg(manifest)
        .args(["--sim", "--json", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(printed["report"].as_str().unwrap()).unwrap())
            .unwrap();
    crate::report_schema::assert_valid(&crate::report_schema::validator(), &report);
    let sheet = std::fs::read_to_string(printed["contact_sheet"].as_str().unwrap()).unwrap();
    (report, sheet)
}

fn change_of<'r>(report: &'r serde_json::Value, key: &str) -> &'r serde_json::Value {
    let job = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["key"] == key)
        .unwrap_or_else(|| panic!("{key} in {report:#}"));
    &job["change"]
}

/// The contact-sheet card of `key`.
fn card<'s>(sheet: &'s str, key: &str) -> &'s str {
    let at = sheet
        .find(&format!("<span class=\"key\">{key}</span>"))
        .unwrap_or_else(|| panic!("{key} on the sheet"));
    let start = sheet[..at].rfind("<div class=\"card").unwrap();
    &sheet[start..at]
}

#[test]
fn the_report_and_contact_sheet_say_what_is_new_unchanged_and_changed_since_last_night() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let night_one = manifest(dir.path(), &[("a harbour", 3), ("a lighthouse", 3)]);
    let (first, _) = run_sim(&night_one, &out, &[]);
    for key in ["ch07_p001_s1", "ch07_p002_s1"] {
        assert_eq!(change_of(&first, key)["kind"], "new", "{first:#}");
    }

    // The next night: page 2's prompt and steps changed, page 3 is new.
    let night_two = manifest(
        dir.path(),
        &[("a harbour", 3), ("a lighthouse in fog", 4), ("a gull", 3)],
    );
    let (second, sheet) = run_sim(&night_two, &out, &[]);
    let unchanged = change_of(&second, "ch07_p001_s1");
    assert_eq!(unchanged["kind"], "unchanged");
    assert_eq!(
        unchanged["previous"]["image"]["path"],
        "ch-07/raw/comfyui/ch07_p001_v1.png"
    );
    let changed = change_of(&second, "ch07_p002_s1");
    assert_eq!(changed["kind"], "changed", "{second:#}");
    assert_eq!(changed["params"], serde_json::json!(["prompt", "steps"]));
    assert_eq!(changed["previous"]["run_id"], first["run_id"]);
    assert_eq!(
        changed["previous"]["image"]["path"],
        "ch-07/raw/comfyui/ch07_p002_v1.png"
    );
    assert_eq!(change_of(&second, "ch07_p003_s1")["kind"], "new");

    // The changed page shows the previous thumbnail beside the new one.
    let page_two = card(&sheet, "ch07_p002_s1");
    assert!(
        page_two.starts_with("<div class=\"card changed\">"),
        "{page_two}"
    );
    assert_eq!(
        page_two
            .matches("<img src=\"data:image/png;base64,")
            .count(),
        2
    );
    assert!(page_two.contains("before: ch07_p002_v1.png"), "{page_two}");
    assert!(page_two.contains(">ch07_p002_v2.png"), "{page_two}");
    assert!(page_two.contains("changed: prompt, steps"), "{page_two}");
    let page_one = card(&sheet, "ch07_p001_s1");
    assert!(page_one.starts_with("<div class=\"card\">"), "{page_one}");
    assert_eq!(page_one.matches("<img ").count(), 1);
    assert!(card(&sheet, "ch07_p003_s1").contains("class=\"change new\""));
    assert!(sheet.contains("<span>1 changed</span><span>1 new</span><span>1 unchanged</span>"));

    // Rendered again with the same inputs: unchanged, the previous image the latest one.
    let (third, _) = run_sim(&night_two, &out, &["--force"]);
    let again = change_of(&third, "ch07_p002_s1");
    assert_eq!(again["kind"], "unchanged");
    assert_eq!(
        again["previous"]["image"]["path"],
        "ch-07/raw/comfyui/ch07_p002_v2.png"
    );
}
