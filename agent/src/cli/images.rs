//! `mini-kubelet images`: the runtime's images.

use mk_cri::api;

use super::output::{self, Format};
use super::{CliError, Cri};

pub const EXAMPLES: &str = "Examples:
  mini-kubelet images
  mini-kubelet images busybox        # only images of this repository or reference
  mini-kubelet images -q
  mini-kubelet images -o json";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only images of this repository (`busybox`) or reference (`busybox:1.36`).
    pub image: Option<String>,
    /// Print only the image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

pub async fn run(cri: &Cri, args: &Args) -> Result<String, CliError> {
    let mut images = cri
        .client()
        .list_images(api::ListImagesRequest { filter: None })
        .await
        .map_err(cri.err())?
        .images;
    if let Some(query) = &args.image {
        images.retain(|i| {
            i.repo_tags
                .iter()
                .any(|t| t == query || split_tag(t).0 == query.as_str())
        });
    }
    images.sort_by(|a, b| a.repo_tags.first().cmp(&b.repo_tags.first()));
    render(&images, args.quiet, args.output)
}

/// `repo:tag` → (`repo`, `tag`); a registry port is not a tag.
fn split_tag(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (reference, "<none>"),
    }
}

pub fn render(images: &[api::Image], quiet: bool, format: Format) -> Result<String, CliError> {
    if quiet {
        return Ok(images.iter().map(|i| format!("{}\n", i.id)).collect());
    }
    match format {
        Format::Table => {
            let mut rows = Vec::new();
            for image in images {
                let id = output::short_id(&image.id);
                let size = output::human_size(image.size);
                if image.repo_tags.is_empty() {
                    let repo = image
                        .repo_digests
                        .first()
                        .and_then(|d| d.split_once('@'))
                        .map_or("<none>", |(repo, _)| repo);
                    rows.push(vec![repo.into(), "<none>".into(), id.clone(), size.clone()]);
                }
                for tag in &image.repo_tags {
                    let (repo, tag) = split_tag(tag);
                    rows.push(vec![repo.into(), tag.into(), id.clone(), size.clone()]);
                }
            }
            Ok(output::table(&["IMAGE", "TAG", "IMAGE ID", "SIZE"], rows))
        }
        Format::Json | Format::Yaml => {
            let list = images
                .iter()
                .map(output::crictl_names)
                .collect::<Result<Vec<_>, _>>()?;
            output::document(format, serde_json::json!({ "images": list }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_tag;

    #[test]
    fn registry_ports_are_not_tags() {
        assert_eq!(split_tag("busybox:1.36"), ("busybox", "1.36"));
        assert_eq!(
            split_tag("127.0.0.1:5000/e2e/busybox:latest"),
            ("127.0.0.1:5000/e2e/busybox", "latest")
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/e2e/busybox"),
            ("127.0.0.1:5000/e2e/busybox", "<none>")
        );
    }
}
