//! The waypoint controller against scripted API answers (kube's mock service): a Gateway of
//! class `weft-waypoint` gets its ServiceAccount, Deployment and Service applied, owned by the
//! Gateway, its ServiceAccount bound to the reader role, and its status set; a Gateway of
//! another class gets nothing.

use std::time::Duration;

use serde_json::json;
use weft_fake_api::FakeApi;

use crate::waypoint_controller::{run, BINDING, FIELD_MANAGER};

const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/gateways";

fn gateway(namespace: &str, name: &str, class: &str, uid: &str) -> serde_json::Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": 2},
        "spec": {"gatewayClassName": class, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
    })
}

#[tokio::test]
async fn a_weft_waypoint_gateway_gets_its_objects_and_another_class_nothing() {
    let (client, fake) = FakeApi::start();
    fake.set_list(
        GATEWAYS,
        vec![
            gateway("demo", "waypoint", "weft-waypoint", "uid-1"),
            gateway("demo", "edge", "istio", "uid-2"),
        ],
    );
    tokio::spawn(run(client, "weft-waypoint:test".into()));
    let applied = |path: &str| {
        fake.seen()
            .into_iter()
            .find(|s| s.method == http::Method::PATCH && s.path == path)
    };
    let deployment_path = "/apis/apps/v1/namespaces/demo/deployments/waypoint";
    let status_path = "/apis/gateway.networking.k8s.io/v1/namespaces/demo/gateways/waypoint/status";
    for _ in 0..200 {
        if applied(status_path).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let deployment = applied(deployment_path).expect("the Deployment was applied");
    assert!(
        deployment
            .query
            .contains(&format!("fieldManager={FIELD_MANAGER}")),
        "{}",
        deployment.query
    );
    assert!(
        deployment.query.contains("force=true"),
        "{}",
        deployment.query
    );
    let body = &deployment.body;
    assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "Gateway");
    assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
    let pod = &body["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "waypoint");
    assert_eq!(pod["containers"][0]["image"], "weft-waypoint:test");
    assert!(
        pod["containers"][0]["args"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("--kube"))),
        "{pod}"
    );
    for path in [
        "/api/v1/namespaces/demo/serviceaccounts/waypoint",
        "/api/v1/namespaces/demo/services/waypoint",
    ] {
        let seen = applied(path).unwrap_or_else(|| panic!("{path} was applied"));
        assert_eq!(
            seen.body["metadata"]["ownerReferences"][0]["uid"], "uid-1",
            "{path}"
        );
    }
    let binding = applied(&format!(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{BINDING}"
    ))
    .expect("the reader binding was applied");
    assert_eq!(binding.body["roleRef"]["name"], "weft-waypoint");
    assert_eq!(
        binding.body["subjects"],
        json!([{"kind": "ServiceAccount", "namespace": "demo", "name": "waypoint"}]),
        "only the weft-waypoint Gateway's ServiceAccount"
    );
    let status = applied(status_path).expect("the Gateway's status was set");
    let conditions = &status.body["status"]["conditions"];
    assert_eq!(conditions[0]["type"], "Accepted");
    assert_eq!(conditions[0]["status"], "True");
    assert_eq!(conditions[0]["observedGeneration"], 2);
    assert!(
        !fake
            .seen()
            .iter()
            .any(|s| s.method == http::Method::PATCH && s.path.contains("/edge")),
        "a Gateway of another class is left alone"
    );
    assert!(
        deployment.body["metadata"]["ownerReferences"][0]
            .get("blockOwnerDeletion")
            .is_none(),
        "no blockOwnerDeletion (it would need gateways/finalizers)"
    );
}

#[test]
fn a_gateway_already_accepted_for_its_generation_is_not_written_again() {
    let mut accepted: kube::api::DynamicObject =
        serde_json::from_value(gateway("demo", "waypoint", "weft-waypoint", "uid-1"))
            .expect("gateway");
    assert!(!crate::waypoint_controller::accepted_for(&accepted, 2));
    accepted.data["status"] = json!({"conditions": [
        {"type": "Accepted", "status": "True", "observedGeneration": 2},
    ]});
    assert!(crate::waypoint_controller::accepted_for(&accepted, 2));
    assert!(
        !crate::waypoint_controller::accepted_for(&accepted, 3),
        "a new generation is written"
    );
}
