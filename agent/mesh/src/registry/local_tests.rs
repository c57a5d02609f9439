//! The manifest folder reader against what a real folder can hold: half-written files, tabs,
//! FIFOs, directories and links posing as manifests, oversized files and unknown kinds.
#![expect(
    clippy::disallowed_methods,
    reason = "tests build their folders synchronously"
)]

use std::path::PathBuf;

use super::local::{Folder, MAX_FILE_BYTES};

/// A scratch folder removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("weft-local-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Self(dir)
    }

    fn write(&self, file: &str, text: &str) {
        // Each write gets a later modification time than the one before, as an editor's would.
        std::thread::sleep(std::time::Duration::from_millis(5));
        std::fs::write(self.0.join(file), text).expect("write");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n";
const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\n  namespace: demo\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n";

#[test]
fn a_half_written_file_keeps_its_last_good_objects_and_is_reported_once_with_its_line() {
    let dir = Scratch::new("truncated");
    dir.write("a.yaml", &format!("{NAMESPACE}---\n{SERVICE}"));
    let mut folder = Folder::new(dir.0.clone());
    let good = folder.rescan().expect("first scan");
    assert_eq!((good.namespaces.len(), good.services.len()), (1, 1));
    assert!(good.errors.is_empty(), "{:?}", good.errors);
    dir.write(
        "a.yaml",
        &format!("{NAMESPACE}---\n{}\n  ports: [{{port: 80", &SERVICE[..60]),
    );
    let bad = folder.rescan().expect("changed");
    assert_eq!(
        (bad.namespaces.len(), bad.services.len()),
        (1, 1),
        "last good version kept"
    );
    assert_eq!(bad.errors.len(), 1, "{:?}", bad.errors);
    assert!(
        bad.errors[0].reason.starts_with("line "),
        "{:?}",
        bad.errors
    );
    assert!(
        bad.errors[0].reason.contains("last good version"),
        "{:?}",
        bad.errors
    );
    assert!(
        folder.rescan().is_none(),
        "nothing changed, nothing rebuilt"
    );
}

#[test]
fn a_tab_indented_file_gives_one_report_and_no_loop() {
    let dir = Scratch::new("tabs");
    dir.write(
        "t.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n\tname: x\n---\n\t- a\n\t- b\n",
    );
    dir.write("ns.yaml", NAMESPACE);
    let registry = Folder::new(dir.0.clone()).rescan().expect("scan");
    assert_eq!(registry.namespaces.len(), 1, "the good file still counts");
    assert_eq!(registry.errors.len(), 1, "{:?}", registry.errors);
    assert!(registry.errors[0].source.ends_with("t.yaml"));
}

#[test]
fn fifos_directories_and_link_loops_named_yaml_are_skipped_and_reported() {
    let dir = Scratch::new("special");
    dir.write("ns.yaml", NAMESPACE);
    nix::unistd::mkfifo(
        &dir.0.join("fifo.yaml"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    std::fs::create_dir(dir.0.join("dir.yaml")).expect("dir");
    std::os::unix::fs::symlink("loop2.yaml", dir.0.join("loop1.yaml")).expect("link");
    std::os::unix::fs::symlink("loop1.yaml", dir.0.join("loop2.yaml")).expect("link");
    std::os::unix::fs::symlink("ns.yaml", dir.0.join("alias.yml")).expect("link");
    let registry = Folder::new(dir.0.clone()).rescan().expect("scan");
    assert_eq!(registry.namespaces.len(), 1);
    let said = |file: &str, what: &str| {
        registry
            .errors
            .iter()
            .any(|e| e.source.ends_with(file) && e.reason.contains(what))
    };
    assert!(said("fifo.yaml", "FIFO"), "{:?}", registry.errors);
    assert!(said("dir.yaml", "directory"), "{:?}", registry.errors);
    assert!(
        said("loop1.yaml", "cannot be opened"),
        "{:?}",
        registry.errors
    );
    assert!(
        !registry
            .errors
            .iter()
            .any(|e| e.source.ends_with("alias.yml")),
        "a link to a regular file is read: {:?}",
        registry.errors
    );
}

#[test]
fn an_oversized_file_is_refused_unread_and_takes_no_room_from_the_others() {
    let dir = Scratch::new("big");
    let size = usize::try_from(MAX_FILE_BYTES).expect("fits") + 1;
    dir.write("a-big.yaml", &"#".repeat(size));
    dir.write("b.yaml", NAMESPACE);
    let registry = Folder::new(dir.0.clone()).rescan().expect("scan");
    assert_eq!(registry.namespaces.len(), 1);
    assert_eq!(registry.errors.len(), 1, "{:?}", registry.errors);
    assert!(registry.errors[0].reason.contains("over the limit"));
}

#[test]
fn reports_are_bounded_whatever_the_folder_holds() {
    let dir = Scratch::new("many");
    let bad: String = (0..500)
        .map(|i| format!("apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w{i}\n  namespace: demo\nspec:\n  x: {}\n", "y".repeat(2000)))
        .collect::<Vec<_>>()
        .join("---\n");
    dir.write("widgets.yaml", &bad);
    let registry = Folder::new(dir.0.clone()).rescan().expect("scan");
    assert_eq!(registry.errors.len(), super::MAX_REPORTS);
    assert_eq!(registry.errors_not_shown, 400);
    assert!(registry
        .errors
        .iter()
        .all(|e| e.reason.len() <= super::MAX_REASON_BYTES + 3));
}

#[test]
fn an_unreadable_deny_policy_fails_closed_for_what_it_selects() {
    let dir = Scratch::new("failclosed");
    dir.write(
        "p.yaml",
        "apiVersion: weft.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: stop\n  namespace: demo\nspec:\n  action: DENY\n  selector:\n    matchLabels:\n      app: db\n  rules: [{}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: istio\n  namespace: demo\nspec:\n  action: DENY\n  rules: [{}]\n---\napiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: audit\n  namespace: demo\nspec:\n  action: AUDIT\n  unknownField: 1\n  rules: [{}]\n",
    );
    let registry = Folder::new(dir.0.clone()).rescan().expect("scan");
    assert_eq!(registry.errors.len(), 3, "{:?}", registry.errors);
    assert!(registry.errors[0]
        .reason
        .contains("did you mean weft.io/v1alpha1 AuthorizationPolicy?"));
    assert_eq!(
        registry.policies.len(),
        1,
        "only the DENY stands in; AUDIT cannot stop anything"
    );
    let stand_in = &registry.policies[0];
    assert!(stand_in.unreadable.is_some());
    let labels = super::Labels::from([("app", "db")]);
    let request = crate::policy::Request {
        namespace: "demo",
        labels: &labels,
        services: &[],
        port: 5432,
        identity: None,
        source_ip: "10.0.0.1".parse().expect("ip"),
        strict: false,
        l7: None,
        gateway: None,
        enforced_by_waypoint: &[],
    };
    let decision = crate::policy::evaluate(&registry.policies, &request);
    assert_eq!(decision.reason, crate::policy::Reason::UnreadablePolicy);
    assert!(
        decision.detail.contains("cannot read"),
        "{}",
        decision.detail
    );
    let other = super::Labels::from([("app", "web")]);
    let request = crate::policy::Request {
        labels: &other,
        ..request
    };
    assert_eq!(
        crate::policy::evaluate(&registry.policies, &request).verdict,
        crate::policy::Verdict::Allow
    );
}
