//! Which `apiVersion`/`kind` pairs the registry reads, which it knows and leaves alone, and
//! what to tell a user whose object is neither: a misspelled kind or a wrong version is named
//! with the pair that was probably meant.

/// The kinds Weft acts on, each under the versions it reads.
pub const READ: &[(&str, &str)] = &[
    ("v1", "Namespace"),
    ("v1", "Node"),
    ("v1", "Pod"),
    ("v1", "Service"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("weft.io/v1alpha1", "AuthorizationPolicy"),
    ("weft.io/v1alpha1", "TrafficPolicy"),
    ("weft.io/v1alpha1", "RequestAuthentication"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1beta1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"),
];

/// Kinds a manifest folder of a real application commonly holds, which Weft knows it does not
/// need: accepted and counted, not reported.
const IGNORED: &[(&str, &str)] = &[
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "ReplicaSet"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
    ("policy/v1", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("networking.k8s.io/v1", "Ingress"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1", "GatewayClass"),
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
];

/// What the registry does with an object of this pair.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Read,
    Ignored,
    /// Not a pair Weft knows: the reason says what was probably meant.
    Unknown(String),
}

pub fn classify(api: &str, kind: &str) -> Verdict {
    if READ.contains(&(api, kind)) {
        return Verdict::Read;
    }
    if IGNORED.contains(&(api, kind)) {
        return Verdict::Ignored;
    }
    Verdict::Unknown(unknown_reason(api, kind))
}

/// The kind Weft reads that `kind` most likely meant, with its version, when one is close.
pub fn meant(api: &str, kind: &str) -> Option<(&'static str, &'static str)> {
    let group = |api: &str| api.rsplit_once('/').map_or("", |(g, _)| g).to_owned();
    let lower = kind.to_ascii_lowercase();
    // The same kind under another version (or case) of the API first, then a near spelling;
    // within a distance, a pair of the same API group wins.
    let exact = READ
        .iter()
        .filter(|(_, k)| k.to_ascii_lowercase() == lower)
        .max_by_key(|(a, _)| group(a) == group(api));
    exact.copied().or_else(|| {
        READ.iter()
            .map(|pair| (distance(&lower, &pair.1.to_ascii_lowercase()), pair))
            .filter(|(d, _)| *d <= 1.max(lower.len() / 4))
            .min_by_key(|(d, (a, _))| (*d, group(a) != group(api)))
            .map(|(_, pair)| *pair)
    })
}

fn unknown_reason(api: &str, kind: &str) -> String {
    if let Some((right_api, right_kind)) = meant(api, kind) {
        if right_kind == kind {
            return format!(
                "{kind} is not served under {api}: did you mean {right_api} {right_kind}? Weft ignores this object until it is fixed"
            );
        }
        return format!(
            "unknown kind {kind} ({api}): did you mean {right_api} {right_kind}? Weft ignores this object until it is fixed"
        );
    }
    if api.starts_with("weft.io/") {
        return format!(
            "weft.io has no kind {kind} under {api}: Weft serves weft.io/v1alpha1 AuthorizationPolicy, TrafficPolicy and RequestAuthentication"
        );
    }
    format!("unknown apiVersion/kind {api}/{kind}: Weft does not read it and ignores the object")
}

/// Levenshtein distance, for names of a few dozen bytes.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_versions_and_spellings_name_what_was_meant() {
        assert_eq!(
            classify("weft.io/v1alpha1", "AuthorizationPolicy"),
            Verdict::Read
        );
        assert_eq!(classify("v1", "ServiceAccount"), Verdict::Ignored);
        let Verdict::Unknown(reason) = classify("weft.io/v1", "AuthorizationPolicy") else {
            panic!("weft.io/v1 is not served");
        };
        assert!(
            reason.contains("did you mean weft.io/v1alpha1 AuthorizationPolicy?"),
            "{reason}"
        );
        let Verdict::Unknown(reason) = classify("weft.io/v1alpha1", "AuthorisationPolicy") else {
            panic!("a misspelled kind is unknown");
        };
        assert!(
            reason.contains("did you mean weft.io/v1alpha1 AuthorizationPolicy?"),
            "{reason}"
        );
        let Verdict::Unknown(reason) = classify("v1", "Podd") else {
            panic!("Podd is unknown");
        };
        assert!(reason.contains("did you mean v1 Pod?"), "{reason}");
        let Verdict::Unknown(reason) = classify("example.com/v1", "Widget") else {
            panic!("Widget is unknown");
        };
        assert!(reason.contains("does not read it"), "{reason}");
    }
}
