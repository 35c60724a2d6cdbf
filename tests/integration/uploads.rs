//! Content-addressed uploads of input images (`comfy::upload`) against the simulator over
//! real HTTP: once per server, the same bytes never sent twice, a name held by other bytes
//! put right, a file changed since it was checked refused, and a server that lost its
//! input folder answered by uploading again and posting once more.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use plasma_batch::comfy::protocol::PromptRequest;
use plasma_batch::comfy::{PostOutcome, UploadError, UploadedName, Uploads, missing_inputs};
use plasma_batch::inputs::{InputImage, check_image_file};
use plasma_batch::plan::Job;
use plasma_batch::report::ReportStatus;
use plasma_batch::workflow::Workflow;
use serde_json::json;

use crate::real_comfy::{SERVER, real_comfy};
use crate::support::{TestSim, client, engine, no_cancel, options, plan, png_size, small_manifest};

/// A real PNG of `width` x `height` whose pixels depend on `seed`.
pub(crate) fn png_file(dir: &Path, name: &str, width: u32, height: u32, seed: u32) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    // A cheap generator: noise does not compress, so the file is as large as its pixels.
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    let data: Vec<u8> = (0..width * height * 3)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    writer.write_image_data(&data).unwrap();
    writer.finish().unwrap();
    path
}

fn checked(path: &Path) -> InputImage {
    check_image_file(path).unwrap()
}

/// Where the simulator keeps an uploaded name.
fn on_server(sim: &TestSim, name: &UploadedName) -> PathBuf {
    sim.input_dir().join(&name.subfolder).join(&name.name)
}

#[tokio::test]
async fn an_image_is_uploaded_once_per_server_under_its_content_name() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        TestSim::start(&[]).await.idle_ok(),
        TestSim::start(&[]).await.idle_ok(),
    );
    let (ca, cb) = (client(&a.url()), client(&b.url()));
    let face = checked(&png_file(dir.path(), "face.png", 40, 30, 1));
    // The same bytes under another local name: the same upload.
    std::fs::copy(&face.path, dir.path().join("copy.png")).unwrap();
    let copy = checked(&dir.path().join("copy.png"));
    let uploads = Uploads::new();

    let name = uploads.ensure(&ca, &face).await.unwrap();
    assert_eq!(name.subfolder, "plasma");
    assert_eq!(name.name, format!("{}.png", &face.sha256.to_string()[..32]));
    assert_eq!(
        std::fs::read(on_server(&a, &name)).unwrap(),
        std::fs::read(&face.path).unwrap(),
        "the server holds the file's bytes under its content name"
    );
    assert_eq!(uploads.ensure(&ca, &face).await.unwrap(), name);
    assert_eq!(uploads.ensure(&ca, &copy).await.unwrap(), name);
    assert_eq!(a.stats().uploads, 1, "the same bytes went to server a once");

    // Another server gets its own upload, under the same name.
    assert_eq!(uploads.ensure(&cb, &face).await.unwrap(), name);
    assert_eq!(b.stats().uploads, 1);
    assert_eq!(a.stats().uploads, 1);
    assert_eq!(uploads.requests_sent(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_asking_at_the_same_time_share_one_upload() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&[]).await.idle_ok();
    let c = client(&sim.url());
    // About 2 MB of noise: several pieces of the streamed body.
    let image = checked(&png_file(dir.path(), "pose.png", 820, 820, 2));
    assert!(image.len > 1_500_000, "{}", image.len);
    let uploads = Arc::new(Uploads::new());
    let asks: Vec<_> = (0..8)
        .map(|_| {
            let (uploads, c, image) = (Arc::clone(&uploads), c.clone(), image.clone());
            tokio::spawn(async move { uploads.ensure(&c, &image).await.unwrap() })
        })
        .collect();
    let mut names = Vec::new();
    for ask in asks {
        names.push(ask.await.unwrap());
    }
    names.dedup();
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(sim.stats().uploads, 1);
    assert_eq!(
        std::fs::read(on_server(&sim, &names[0])).unwrap(),
        std::fs::read(&image.path).unwrap()
    );
}

#[tokio::test]
async fn a_second_run_finds_the_same_bytes_there_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&[]).await.idle_ok();
    let c = client(&sim.url());
    let image = checked(&png_file(dir.path(), "ref.png", 16, 16, 3));
    let first = Uploads::new().ensure(&c, &image).await.unwrap();
    // A new run does not know what the last one uploaded: the server answers the same name.
    let second = Uploads::new().ensure(&c, &image).await.unwrap();
    assert_eq!(first, second);
    let stats = sim.stats();
    assert_eq!((stats.uploads, stats.uploads_written), (2, 1));
}

#[tokio::test]
async fn a_name_held_by_other_bytes_is_overwritten_with_the_right_ones() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&[]).await.idle_ok();
    let c = client(&sim.url());
    let image = checked(&png_file(dir.path(), "ref.png", 16, 16, 4));
    let name = UploadedName::for_image(&image);
    // An earlier upload cut short left other bytes under the name.
    std::fs::create_dir_all(sim.input_dir().join("plasma")).unwrap();
    std::fs::write(on_server(&sim, &name), b"half a file").unwrap();
    let uploads = Uploads::new();
    assert_eq!(uploads.ensure(&c, &image).await.unwrap(), name);
    assert_eq!(
        std::fs::read(on_server(&sim, &name)).unwrap(),
        std::fs::read(&image.path).unwrap()
    );
    // The first try was renamed `<hash> (1).png` by the server, the second overwrote.
    assert_eq!(uploads.requests_sent(), 2);
}

#[tokio::test]
async fn a_file_changed_after_its_check_is_not_uploaded_under_the_old_name() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&[]).await.idle_ok();
    let c = client(&sim.url());
    let path = png_file(dir.path(), "ref.png", 16, 16, 5);
    let image = checked(&path);
    // Same length, other bytes.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let uploads = Uploads::new();
    let e = uploads.ensure(&c, &image).await.unwrap_err();
    assert!(matches!(e, UploadError::Changed { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("ref.png") && text.contains(&sim.url()) && text.contains("run again"),
        "{text}"
    );
    // Checked again, it goes up under its new name.
    std::fs::write(
        &path,
        std::fs::read(png_file(dir.path(), "b.png", 16, 16, 6)).unwrap(),
    )
    .unwrap();
    let again = checked(&path);
    let name = uploads.ensure(&c, &again).await.unwrap();
    assert_eq!(
        std::fs::read(on_server(&sim, &name)).unwrap(),
        std::fs::read(&path).unwrap()
    );
}

#[tokio::test]
async fn a_server_that_lost_its_input_folder_gets_the_image_again_and_the_prompt_once_more() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&[]).await;
    let c = client(&sim.url());
    let image = checked(&png_file(dir.path(), "page3.png", 24, 16, 7));
    let uploads = Uploads::new();
    let name = uploads.ensure(&c, &image).await.unwrap();
    let graph = Workflow::from_value(&json!({
        "10": {"class_type": "LoadImage", "inputs": {"image": name.load_image_value()}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "img2img", "images": ["10", 0]}}
    }));
    let post = |prompt_id: &'static str| {
        let (c, graph) = (c.clone(), graph.clone());
        async move {
            let posted_at = Instant::now();
            let outcome = c
                .post_prompt(&PromptRequest {
                    prompt: &graph,
                    client_id: "uploads-test",
                    prompt_id,
                })
                .await
                .unwrap();
            (outcome, posted_at)
        }
    };
    // The server's input folder is emptied behind the run's back.
    std::fs::remove_dir_all(sim.input_dir().join("plasma")).unwrap();
    // This run uploaded it already: ensure alone would not send it again.
    assert_eq!(uploads.ensure(&c, &image).await.unwrap(), name);
    // Two jobs refused for it at the same time.
    let (first, second) = tokio::join!(
        post("00000000-0000-4000-8000-000000000001"),
        post("00000000-0000-4000-8000-000000000002")
    );
    for (outcome, _) in [&first, &second] {
        let PostOutcome::Rejected(rejected) = outcome else {
            panic!("LoadImage of a file the server lost must be refused");
        };
        assert_eq!(missing_inputs(rejected), vec![name.load_image_value()]);
    }
    assert_eq!(uploads.reupload(&c, &image, first.1).await.unwrap(), name);
    assert!(on_server(&sim, &name).is_file());
    // The second one's refusal came before that new upload: it is not sent a third time.
    assert_eq!(uploads.reupload(&c, &image, second.1).await.unwrap(), name);
    assert_eq!(sim.stats().uploads, 2);
    assert!(matches!(
        post("00000000-0000-4000-8000-000000000003").await.0,
        PostOutcome::Accepted(_)
    ));
    // Lost again after that: a refusal posted after the last upload sends it once more.
    std::fs::remove_dir_all(sim.input_dir().join("plasma")).unwrap();
    let (outcome, posted_at) = post("00000000-0000-4000-8000-000000000004").await;
    assert!(matches!(outcome, PostOutcome::Rejected(_)));
    assert_eq!(uploads.reupload(&c, &image, posted_at).await.unwrap(), name);
    assert_eq!(sim.stats().uploads, 3);
}

/// Opt-in (`PLASMA_REAL_COMFY`, see `real_comfy.rs`): the real ComfyUI 0.8.0 answers as the
/// module expects: a new image stored under its content name with its bytes, the same bytes
/// again answered with the same name (so a second run sends one request and no overwrite),
/// a `LoadImage` of the upload accepted, and one of a name it does not have refused in the
/// words `missing_inputs` reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_server_answers_uploads_as_the_module_expects() {
    let Some(url) = real_comfy("the_real_server_answers_uploads_as_the_module_expects") else {
        return;
    };
    let _one = SERVER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&url);
    // New content each time, so the first upload writes.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let image = checked(&png_file(dir.path(), "ref.png", 16, 16, seed));
    let first = Uploads::new();
    let name = first.ensure(&c, &image).await.unwrap();
    assert_eq!(first.requests_sent(), 1);
    let view = reqwest::get(format!(
        "{url}/view?filename={}&subfolder=plasma&type=input",
        name.name
    ))
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    assert!(
        view.as_ref() == std::fs::read(&image.path).unwrap().as_slice(),
        "the server serves back the uploaded bytes"
    );
    let second = Uploads::new();
    assert_eq!(second.ensure(&c, &image).await.unwrap(), name);
    assert_eq!(
        second.requests_sent(),
        1,
        "same bytes: the same name, no overwrite"
    );

    let graph = |image: &str| {
        Workflow::from_value(&json!({
            "10": {"class_type": "LoadImage", "inputs": {"image": image}},
            "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "plasma_upload_check", "images": ["10", 0]}}
        }))
    };
    let post = |graph: Workflow| {
        let c = c.clone();
        async move {
            let prompt_id = uuid::Uuid::new_v4().to_string();
            c.post_prompt(&PromptRequest {
                prompt: &graph,
                client_id: "plasma-upload-check",
                prompt_id: &prompt_id,
            })
            .await
            .unwrap()
        }
    };
    assert!(matches!(
        post(graph(&name.load_image_value())).await,
        PostOutcome::Accepted(_)
    ));
    let absent = format!("plasma/{}.png", "0".repeat(32));
    let PostOutcome::Rejected(rejected) = post(graph(&absent)).await else {
        panic!("a LoadImage of a file the server does not have must be refused");
    };
    assert_eq!(missing_inputs(&rejected), vec![absent]);
}

/// The plan's jobs as img2img-style jobs: `LoadImage` of `image`'s upload name -> `SaveImage`
/// with the job's own prefix, `image` among the job's inputs.
fn jobs_loading(plan: &plasma_batch::plan::Plan, image: &InputImage) -> Vec<Arc<Job>> {
    let name = UploadedName::for_image(image).load_image_value();
    plan.jobs
        .iter()
        .map(|job| {
            let mut job = (**job).clone();
            job.workflow = Workflow::from_value(&json!({
                "10": {"class_type": "LoadImage", "inputs": {"image": name}},
                "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": &*job.params.filename_prefix, "images": ["10", 0]}}
            }));
            job.output_nodes = Arc::from(["9".to_owned()]);
            job.inputs = vec![image.clone()];
            Arc::new(job)
        })
        .collect()
}

/// A run of `pages` x `variants` such jobs (see [`jobs_loading`]) on the server at `url`,
/// writing under `dir/out`.
async fn run_loading(
    dir: &Path,
    url: &str,
    image: &InputImage,
    pages: u16,
    variants: u32,
) -> plasma_batch::runner::RunSummary {
    let plan = plan(&small_manifest(dir, pages, variants, ""));
    plasma_batch::runner::run_jobs(
        options(&plan, &dir.join("out"), engine()),
        vec![client(url)],
        jobs_loading(&plan, image),
        no_cancel(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_puts_each_input_on_the_server_once_before_the_jobs_that_load_it() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&[]).await;
    let image = checked(&png_file(dir.path(), "sheet.png", 64, 96, 8));
    let summary = run_loading(dir.path(), &sim.url(), &image, 2, 2).await;
    assert_eq!(summary.outcomes.len(), 4);
    for outcome in &summary.outcomes {
        assert_eq!(
            outcome.status,
            ReportStatus::Succeeded,
            "{}: {:?}",
            outcome.job.key,
            outcome.error
        );
        // The saved image is the loaded one (the manifest's 64x96: the download checks it).
        assert_eq!(
            png_size(&dir.path().join("out").join(&outcome.images[0].path)),
            (64, 96)
        );
    }
    let stats = sim.stats();
    assert_eq!((stats.uploads, stats.prompts_accepted), (1, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_refused_because_the_server_lost_its_input_uploads_it_again_and_posts_once_more() {
    let dir = tempfile::tempdir().unwrap();
    // The input folder is wiped just before the first POST is validated.
    let sim = TestSim::start(&["lose-inputs:1"]).await;
    let image = checked(&png_file(dir.path(), "pose.png", 64, 96, 9));
    let summary = run_loading(dir.path(), &sim.url(), &image, 1, 1).await;
    let outcome = &summary.outcomes[0];
    assert_eq!(
        outcome.status,
        ReportStatus::Succeeded,
        "{:?}",
        outcome.error
    );
    assert_eq!(
        outcome.attempts, 1,
        "uploading again is part of the one attempt"
    );
    let stats = sim.stats();
    assert_eq!(
        (
            stats.uploads,
            stats.prompts_rejected,
            stats.prompts_accepted
        ),
        (2, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_that_cannot_be_read_fails_its_job_naming_the_file_and_nothing_is_posted() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&[]).await.idle_ok();
    let image = checked(&png_file(dir.path(), "gone.png", 8, 8, 10));
    std::fs::remove_file(&image.path).unwrap();
    let summary = run_loading(dir.path(), &sim.url(), &image, 1, 1).await;
    let outcome = &summary.outcomes[0];
    assert_eq!(outcome.status, ReportStatus::Failed);
    let message = &outcome.error.as_ref().unwrap().message;
    assert!(
        message.contains("gone.png") && message.contains(&sim.url()),
        "{message}"
    );
    assert_eq!(sim.prompts_posted(), 0);
}
