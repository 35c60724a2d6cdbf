//! Real run reports validate against the committed JSON Schema (docs/report.schema.json).

use crate::support::*;

pub fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("docs/report.schema.json")).unwrap())
            .unwrap();
    jsonschema::validator_for(&schema).expect("the schema itself is valid")
}

pub(crate) fn assert_valid(validator: &jsonschema::Validator, report: &serde_json::Value) {
    let errors: Vec<String> = validator
        .iter_errors(report)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "the report does not match its schema:\n{}",
        errors.join("\n")
    );
}

#[tokio::test]
async fn reports_of_successful_skipped_and_failed_jobs_match_the_schema() {
    let validator = validator();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sim = TestSim::start(&[]).await;
    let plan = plan(&small_manifest(dir.path(), 2, 2, ""));
    let summary = run_on(&plan, &out, &[sim.url()], false).await;
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary.report_path).unwrap()).unwrap();
    assert_valid(&validator, &report);
    assert_eq!(report["totals"]["succeeded"], 4);
    assert_eq!(
        report["servers"][0]["comfyui_version"]
            .as_str()
            .map(|v| !v.is_empty()),
        Some(true)
    );

    // Skipped jobs.
    let again = run_on(&plan, &out, &[sim.url()], false).await;
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&again.report_path).unwrap()).unwrap();
    assert_valid(&validator, &report);
    assert_eq!(report["totals"]["skipped"], 4);
    drop(sim);

    // Failed jobs, with error details.
    let failing = TestSim::start(&["raise:KSampler"]).await;
    let failed = run_on(&plan, &out, &[failing.url()], true).await;
    let mut report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&failed.report_path).unwrap()).unwrap();
    assert_valid(&validator, &report);
    assert_eq!(report["totals"]["failed"], 4);
    assert_eq!(report["jobs"][0]["error"]["kind"], "node_error");
    drop(failing);

    // The schema has teeth: a failed job claiming an image, or an unknown status, is rejected.
    report["jobs"][0]["images"] = serde_json::json!([{"path": "ch-07/raw/comfyui/ch07_p001_v9.png", "bytes": 10, "sha256": "0".repeat(64), "width": 64, "height": 96}]);
    assert!(!validator.is_valid(&report));
    report["jobs"][0]["images"] = serde_json::json!([]);
    report["jobs"][0]["status"] = "done".into();
    assert!(!validator.is_valid(&report));
}
