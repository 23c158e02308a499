//! `mini-kubelet pull IMAGE`: CRI `PullImage` with a spinner, then the image's size from
//! `ImageStatus`.

use std::time::{Duration, Instant};

use mk_cri::api;

use super::{CliError, Cri, output};

pub const EXAMPLES: &str =
    "CRI PullImage reports no progress: a spinner shows the time elapsed (on a terminal), and the
image's ID and size (from ImageStatus) are printed to stderr at the end. Pulls go through the
runtime, with its registry configuration (mirrors, insecure registries).

Examples:
  mini-kubelet pull busybox:1.36
  mini-kubelet pull --creds user:secret registry.example:5000/team/app:v2";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Image reference.
    pub image: String,
    /// Registry credentials, USERNAME[:PASSWORD].
    #[arg(long)]
    pub creds: Option<String>,
}

pub async fn run(cri: &Cri, args: &Args) -> Result<String, CliError> {
    let auth = args.creds.as_ref().map(|creds| {
        let (username, password) = creds.split_once(':').unwrap_or((creds, ""));
        api::AuthConfig {
            username: username.into(),
            password: password.into(),
            ..Default::default()
        }
    });
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} pulling {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    spinner.set_message(args.image.clone());
    spinner.enable_steady_tick(Duration::from_millis(100));
    let started = Instant::now();
    let image = api::ImageSpec {
        image: args.image.clone(),
        ..Default::default()
    };
    let pulled = cri
        .client()
        .pull_image(api::PullImageRequest {
            image: Some(image.clone()),
            auth,
            sandbox_config: None,
        })
        .await
        .map_err(cri.err());
    spinner.finish_and_clear();
    let image_ref = pulled?.image_ref;
    let status = cri
        .client()
        .image_status(api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: image_ref.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .map_err(cri.err())?;
    match status.image {
        Some(image) => eprintln!(
            "pulled {} in {:.1}s: {}, {}",
            args.image,
            started.elapsed().as_secs_f64(),
            output::short_id(&image.id),
            output::human_size(image.size)
        ),
        None => eprintln!(
            "pulled {} in {:.1}s",
            args.image,
            started.elapsed().as_secs_f64()
        ),
    }
    Ok(format!("Image is up to date for {image_ref}\n"))
}
