//! Pod conditions against kube's mock service: a gated pod gets its condition patched, and a
//! refused patch is retried until it lands, newest state only.

use std::time::Duration;

use weft_fake_api::FakeApi;
use weft_mesh::registry::ENROLLED_CONDITION;

#[tokio::test]
async fn gated_pods_get_their_condition_patched() {
    let (client, fake) = FakeApi::start();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(crate::conditions::publish(client, rx));
    tx.send(crate::enrollment::PodCondition {
        namespace: "demo".into(),
        name: "a".into(),
        enrolled: true,
        message: "traffic captured by weft-agent".into(),
    })
    .expect("send");
    let mut patch = None;
    for _ in 0..500 {
        patch = fake
            .seen()
            .into_iter()
            .find(|s| s.method == http::Method::PATCH);
        if patch.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let patch = patch.expect("a status patch");
    assert_eq!(patch.path, "/api/v1/namespaces/demo/pods/a/status");
    let condition = &patch.body["status"]["conditions"][0];
    assert_eq!(condition["type"], ENROLLED_CONDITION);
    assert_eq!(condition["status"], "True");
}

#[tokio::test]
async fn a_failed_condition_patch_is_retried_until_it_lands() {
    let (client, fake) = FakeApi::start();
    fake.fail_patches(3);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(crate::conditions::publish(client, rx));
    for enrolled in [false, true] {
        tx.send(crate::enrollment::PodCondition {
            namespace: "demo".into(),
            name: "a".into(),
            enrolled,
            message: "m".into(),
        })
        .expect("send");
    }
    let patches = |fake: &FakeApi| -> Vec<String> {
        fake.seen()
            .into_iter()
            .filter(|s| s.method == http::Method::PATCH)
            .map(|s| s.body["status"]["conditions"][0]["status"].to_string())
            .collect()
    };
    // Three refused patches, retried 0.2 + 0.4 + 0.8 s apart; the fourth lands.
    for _ in 0..1000 {
        if patches(&fake).len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = patches(&fake);
    assert_eq!(sent.len(), 4, "{sent:?}");
    // Only the newest condition for the pod is sent and retried: the stale False never is.
    assert!(sent.iter().all(|s| s == "\"True\""), "{sent:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(patches(&fake).len(), 4, "a landed patch is not repeated");
}
