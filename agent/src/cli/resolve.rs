//! What people type → runtime objects: a full ID, a unique ID prefix, or (as crictl accepts) a
//! name where it is unambiguous. Several instances of one container (restarts: same pod, same
//! name) or of one pod (sandbox attempts: same UID) are one name: the newest instance is meant.

use mk_cri::api;

use super::{CliError, Cri};

/// What [`pick`] compares of one object.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub id: &'a str,
    /// Names it may be called by (a container's name; a pod's name).
    pub name: &'a str,
    /// Instances of the same thing share it (a container's sandbox ID, a pod's UID).
    pub group: &'a str,
    pub created_at: i64,
}

/// Which of `candidates` `query` names: an exact ID, else the one ID starting with it, else the
/// newest instance of the one thing named so. Errors list the IDs that matched.
pub fn pick(
    kind: &'static str,
    query: &str,
    candidates: &[Candidate<'_>],
) -> Result<usize, CliError> {
    if query.is_empty() {
        return Err(CliError::NotFound {
            kind,
            query: query.into(),
        });
    }
    let query_id = query.strip_prefix("sha256:").unwrap_or(query);
    let id_of = |c: &Candidate<'_>| c.id.strip_prefix("sha256:").unwrap_or(c.id).to_string();
    if let Some(i) = candidates.iter().position(|c| id_of(c) == query_id) {
        return Ok(i);
    }
    let by_prefix: Vec<usize> = (0..candidates.len())
        .filter(|&i| id_of(&candidates[i]).starts_with(query_id))
        .collect();
    match by_prefix.as_slice() {
        [one] => return Ok(*one),
        [] => {}
        many => return Err(ambiguous(kind, query, candidates, many)),
    }
    let by_name: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].name == query)
        .collect();
    let Some(&first) = by_name.first() else {
        return Err(CliError::NotFound {
            kind,
            query: query.into(),
        });
    };
    if by_name
        .iter()
        .any(|&i| candidates[i].group != candidates[first].group)
    {
        return Err(ambiguous(kind, query, candidates, &by_name));
    }
    Ok(by_name
        .into_iter()
        .max_by_key(|&i| candidates[i].created_at)
        .unwrap_or(first))
}

fn ambiguous(
    kind: &'static str,
    query: &str,
    candidates: &[Candidate<'_>],
    matches: &[usize],
) -> CliError {
    CliError::Ambiguous {
        kind,
        query: query.into(),
        matches: matches
            .iter()
            .map(|&i| super::output::short_id(candidates[i].id))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Every container of the runtime, running or not.
pub async fn all_containers(cri: &Cri) -> Result<Vec<api::Container>, CliError> {
    Ok(cri
        .client()
        .list_containers(api::ListContainersRequest { filter: None })
        .await
        .map_err(cri.err())?
        .containers)
}

/// Every pod sandbox of the runtime.
pub async fn all_sandboxes(cri: &Cri) -> Result<Vec<api::PodSandbox>, CliError> {
    Ok(cri
        .client()
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
        .map_err(cri.err())?
        .items)
}

/// The container `query` names (ID, unique ID prefix, or name).
pub fn container<'a>(
    containers: &'a [api::Container],
    query: &str,
) -> Result<&'a api::Container, CliError> {
    let candidates: Vec<Candidate<'_>> = containers
        .iter()
        .map(|c| Candidate {
            id: &c.id,
            name: c.metadata.as_ref().map_or("", |m| m.name.as_str()),
            group: &c.pod_sandbox_id,
            created_at: c.created_at,
        })
        .collect();
    pick("container", query, &candidates).map(|i| &containers[i])
}

/// The pod sandbox `query` names (ID, unique ID prefix, or pod name).
pub fn sandbox<'a>(
    sandboxes: &'a [api::PodSandbox],
    query: &str,
) -> Result<&'a api::PodSandbox, CliError> {
    let candidates: Vec<Candidate<'_>> = sandboxes
        .iter()
        .map(|s| Candidate {
            id: &s.id,
            name: s.metadata.as_ref().map_or("", |m| m.name.as_str()),
            group: s.metadata.as_ref().map_or("", |m| m.uid.as_str()),
            created_at: s.created_at,
        })
        .collect();
    pick("pod sandbox", query, &candidates).map(|i| &sandboxes[i])
}

/// The image `query` names: an image ID or unique prefix of one, or a reference the runtime
/// knows (`busybox:1.36`, `docker.io/library/busybox:1.36`, a digest reference).
pub async fn image(cri: &Cri, query: &str) -> Result<api::Image, CliError> {
    let images = cri
        .client()
        .list_images(api::ListImagesRequest { filter: None })
        .await
        .map_err(cri.err())?
        .images;
    if let Some(image) = images.iter().find(|i| {
        i.repo_tags
            .iter()
            .chain(&i.repo_digests)
            .any(|r| r == query)
    }) {
        return Ok(image.clone());
    }
    let candidates: Vec<Candidate<'_>> = images
        .iter()
        .map(|i| Candidate {
            id: &i.id,
            name: "",
            group: &i.id,
            created_at: 0,
        })
        .collect();
    match pick("image", query, &candidates) {
        Ok(i) => Ok(images[i].clone()),
        Err(CliError::NotFound { .. }) => {
            // A short reference the runtime normalises (`busybox` → docker.io/library/busybox:latest).
            let status = cri
                .client()
                .image_status(api::ImageStatusRequest {
                    image: Some(api::ImageSpec {
                        image: query.into(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .map_err(cri.err())?;
            status.image.ok_or_else(|| CliError::NotFound {
                kind: "image",
                query: query.into(),
            })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c<'a>(id: &'a str, name: &'a str, group: &'a str, created_at: i64) -> Candidate<'a> {
        Candidate {
            id,
            name,
            group,
            created_at,
        }
    }

    #[test]
    fn ids_prefixes_and_names() {
        let all = [
            c("abc123", "web", "pod1", 1),
            c("abd456", "web", "pod1", 2),
            c("ffe789", "db", "pod2", 3),
            c("ab", "sidecar", "pod3", 4),
        ];
        // An exact ID wins over being the prefix of others.
        assert_eq!(pick("container", "ab", &all).ok(), Some(3));
        assert_eq!(pick("container", "abc", &all).ok(), Some(0));
        assert_eq!(pick("container", "ff", &all).ok(), Some(2));
        // Two instances of `web` in one pod: the newest.
        assert_eq!(pick("container", "web", &all).ok(), Some(1));
        assert_eq!(pick("container", "db", &all).ok(), Some(2));
        assert!(matches!(
            pick("container", "a", &all),
            Err(CliError::Ambiguous { matches, .. }) if matches == "abc123, abd456, ab"
        ));
        assert!(matches!(
            pick("container", "zzz", &all),
            Err(CliError::NotFound { .. })
        ));
        assert!(matches!(
            pick("container", "", &all),
            Err(CliError::NotFound { .. })
        ));
    }

    #[test]
    fn a_name_in_two_pods_is_ambiguous() {
        let all = [c("111", "main", "pod1", 1), c("222", "main", "pod2", 2)];
        let err = pick("container", "main", &all).expect_err("ambiguous");
        assert_eq!(
            err.to_string(),
            "container \"main\" is ambiguous, it matches: 111, 222"
        );
    }

    #[test]
    fn image_ids_match_with_or_without_their_algorithm() {
        let all = [
            c("sha256:aaaa1111", "", "1", 0),
            c("sha256:bbbb2222", "", "2", 0),
        ];
        assert_eq!(pick("image", "aaaa", &all).ok(), Some(0));
        assert_eq!(pick("image", "sha256:bbbb", &all).ok(), Some(1));
        assert_eq!(pick("image", "bbbb2222", &all).ok(), Some(1));
    }
}
