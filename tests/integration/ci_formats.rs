//! `run --junit PATH`, `run --summary PATH` and `$GITHUB_STEP_SUMMARY`, through the real
//! binary against `plasma-batch sim` children.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use assert_cmd::Command;

use crate::faults_outage::SimProcess;
use crate::support::*;

pub(crate) fn bin() -> Command {
    let mut cmd = Command::cargo_bin("plasma-batch").unwrap();
    cmd.env_remove("PLASMA_COMFY_URL")
        .env_remove("PLASMA_COMFY_TOKEN")
        .env_remove("GITHUB_STEP_SUMMARY");
    cmd
}

pub(crate) fn run(manifest: &Path, out: &Path, server: &str, extra: &[&str]) -> Output {
    bin()
        .arg("run")
        .arg(manifest)
        .args(["--server", server, "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// One XML element as the test reads it back: its attributes and text, and its children.
#[derive(Debug, Default)]
struct Element {
    name: String,
    attributes: BTreeMap<String, String>,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn attr(&self, name: &str) -> &str {
        self.attributes.get(name).map_or("", String::as_str)
    }
}

/// Parse `xml` with a real XML reader (which refuses a document that is not well formed).
fn parse_xml(xml: &str) -> Element {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut stack = vec![Element::default()];
    let element = |start: &quick_xml::events::BytesStart| Element {
        name: String::from_utf8(start.name().as_ref().to_vec()).unwrap(),
        attributes: start
            .attributes()
            .map(|a| {
                let a = a.unwrap();
                (
                    String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                    a.normalized_value(quick_xml::XmlVersion::Explicit1_0)
                        .unwrap()
                        .into_owned(),
                )
            })
            .collect(),
        ..Element::default()
    };
    loop {
        match reader.read_event().unwrap() {
            Event::Start(start) => stack.push(element(&start)),
            Event::Empty(start) => stack.last_mut().unwrap().children.push(element(&start)),
            Event::End(_) => {
                let done = stack.pop().unwrap();
                stack.last_mut().unwrap().children.push(done);
            }
            Event::Text(text) => stack
                .last_mut()
                .unwrap()
                .text
                .push_str(&text.decode().unwrap()),
            Event::GeneralRef(r) => {
                let name = r.decode().unwrap();
                let c = match &*name {
                    "lt" => "<",
                    "gt" => ">",
                    "amp" => "&",
                    "quot" => "\"",
                    "apos" => "'",
                    other => panic!("unexpected entity {other}"),
                };
                stack.last_mut().unwrap().text.push_str(c);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(stack.len(), 1, "every element is closed");
    stack.pop().unwrap().children.pop().expect("a root element")
}

#[test]
fn junit_and_markdown_summary_of_a_run_with_skipped_and_failed_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 3, 1, "");
    let out = dir.path().join("out");
    // Page 1 renders now, so the next run skips it.
    let good = SimProcess::start(&["--step-ms", "1"]);
    let first = run(&manifest, &out, &good.url, &["--only", "ch07_p001"]);
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    drop(good);

    // Pages 2 and 3 fail on a server whose sampler raises.
    let failing = SimProcess::start(&["--step-ms", "1", "--fault", "raise:KSampler"]);
    let junit = dir.path().join("junit.xml");
    let summary = dir.path().join("summary.md");
    let step_summary = dir.path().join("step_summary.md");
    std::fs::write(&step_summary, "# an earlier step's summary\n").unwrap();
    let output = bin()
        .env("GITHUB_STEP_SUMMARY", &step_summary)
        .arg("run")
        .arg(&manifest)
        .args(["--server", &failing.url, "--json", "--out"])
        .arg(&out)
        .arg("--junit")
        .arg(&junit)
        .arg("--summary")
        .arg(&summary)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let contact_sheet = printed["contact_sheet"].as_str().unwrap().to_owned();

    let root = parse_xml(&std::fs::read_to_string(&junit).unwrap());
    assert_eq!(root.name, "testsuites");
    assert_eq!(
        (
            root.attr("tests"),
            root.attr("failures"),
            root.attr("skipped"),
            root.attr("errors")
        ),
        ("3", "2", "1", "0")
    );
    let suites: Vec<&Element> = root
        .children
        .iter()
        .filter(|c| c.name == "testsuite")
        .collect();
    assert_eq!(suites.len(), 1, "one chapter, one suite");
    let suite = suites[0];
    assert_eq!(suite.attr("name"), "ch07 test chapter");
    assert_eq!(suite.attr("tests"), "3");
    let properties = suite.child("properties").unwrap();
    assert!(
        properties
            .children
            .iter()
            .any(|p| p.attr("name") == "contact_sheet" && p.attr("value") == contact_sheet),
        "{properties:?}"
    );
    let cases: BTreeMap<&str, &Element> = suite
        .children
        .iter()
        .filter(|c| c.name == "testcase")
        .map(|c| (c.attr("name"), c))
        .collect();
    assert_eq!(
        cases.keys().copied().collect::<Vec<_>>(),
        ["ch07_p001_s1", "ch07_p002_s1", "ch07_p003_s1"]
    );
    assert!(cases["ch07_p001_s1"].child("skipped").is_some());
    assert!(cases["ch07_p001_s1"].child("failure").is_none());
    for key in ["ch07_p002_s1", "ch07_p003_s1"] {
        let case = cases[key];
        assert_eq!(case.attr("classname"), "ch07");
        let failure = case.child("failure").unwrap_or_else(|| panic!("{case:?}"));
        assert_eq!(failure.attr("type"), "node_error");
        assert!(!failure.attr("message").is_empty());
        // The body carries the server's details: which server, which node, its traceback.
        assert!(
            failure.text.contains(&format!("server: {}", failing.url)),
            "{}",
            failure.text
        );
        assert!(failure.text.contains("KSampler"), "{}", failure.text);
        assert!(failure.text.contains("details:"), "{}", failure.text);
    }

    let markdown = std::fs::read_to_string(&summary).unwrap();
    check_markdown(&markdown, &contact_sheet, &failing.url);
    // Appended to the step summary, after what an earlier step wrote.
    let step = std::fs::read_to_string(&step_summary).unwrap();
    assert!(step.starts_with("# an earlier step's summary\n"), "{step}");
    assert!(step.contains(&markdown), "{step}");
}

/// The summary of the run above: totals, the contact sheet linked, the two failed jobs with
/// their errors and server, the skipped one not listed.
fn check_markdown(markdown: &str, contact_sheet: &str, url: &str) {
    assert!(
        markdown.contains("2 of 3 jobs did not render"),
        "{markdown}"
    );
    assert!(
        markdown.contains("Since the previous images: 0 changed, 2 new, 1 unchanged"),
        "{markdown}"
    );
    assert!(
        markdown.contains("3 jobs: 0 succeeded, 1 skipped, 2 failed"),
        "{markdown}"
    );
    assert!(
        markdown.contains(&format!("(<{contact_sheet}>)")),
        "the contact sheet is linked: {markdown}"
    );
    for key in ["ch07_p002_s1", "ch07_p003_s1"] {
        let row = markdown
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("{key} is listed: {markdown}"));
        assert!(row.contains("node_error"), "{row}");
        assert!(row.contains(url), "{row}");
    }
    assert!(!markdown.contains("`ch07_p001_s1`"), "{markdown}");
}

#[test]
fn a_junit_path_in_a_missing_folder_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 1, 1, "");
    let out = dir.path().join("out");
    let missing = dir.path().join("no-such-folder").join("junit.xml");
    let output = bin()
        .arg("run")
        .arg(&manifest)
        .args(["--sim", "--out"])
        .arg(&out)
        .arg("--junit")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--junit"), "{stderr}");
    assert!(stderr.contains("no-such-folder"), "{stderr}");
    let reports = out.join("ch-07/reports");
    let written = std::fs::read_dir(&reports).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count()
    });
    assert_eq!(written, 0, "no run started");
}
