//! The Kubernetes objects a waypoint is made of, for a Gateway of class `weft-waypoint`
//! (SPEC, Waypoints): a ServiceAccount named after it (its identity), a Deployment running
//! `weft-waypoint` and a Service for its HBONE port. Weft's controller applies them, owned by
//! the Gateway; `weftctl waypoint generate` prints them with the Gateway, for people who apply
//! them by hand. One function builds both, so they cannot drift.

use serde_json::{json, Value};

/// The image a waypoint Deployment runs when none is given.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/weft-mesh/weft-waypoint:",
    env!("CARGO_PKG_VERSION")
);

/// The Gateway class that declares a waypoint.
pub const GATEWAY_CLASS: &str = "weft-waypoint";
/// The label on a waypoint's pods naming its Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The ClusterRole (shipped in deploy/) that lets a waypoint read the registry and write its
/// routes' status; the controller binds every waypoint's ServiceAccount to it.
pub const READER_ROLE: &str = "weft-waypoint";

/// The Gateway declaring waypoint `namespace/name`.
pub fn gateway(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "gatewayClassName": GATEWAY_CLASS,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    })
}

/// The ServiceAccount, Deployment and Service of waypoint `namespace/name` running `image`.
pub fn objects(namespace: &str, name: &str, image: &str) -> Vec<Value> {
    let labels = json!({
        "gateway.networking.k8s.io/gateway-name": name,
        "app.kubernetes.io/name": "weft-waypoint",
        "app.kubernetes.io/instance": name,
    });
    let metadata = json!({"name": name, "namespace": namespace, "labels": labels});
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": 15021}, "periodSeconds": 5});
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata}),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": name}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": name,
                        "terminationGracePeriodSeconds": 30,
                        // The waypoint's own pod-bound token gets it its own SVID from the CA;
                        // the root bundle is the weft-ca-root ConfigMap, copied into this
                        // namespace (deploy/README.md).
                        "volumes": [
                            {"name": "ca-token", "projected": {"sources": [{"serviceAccountToken": {
                                "audience": "weft-ca", "expirationSeconds": 3600, "path": "token"}}]}},
                            {"name": "ca-root", "configMap": {"name": "weft-ca-root"}},
                        ],
                        "containers": [{
                            "name": "waypoint",
                            "image": image,
                            "args": ["--kube", "--namespace", namespace, "--name", name,
                                     "--ca-url", "https://weft-ca.weft-system.svc:15012",
                                     "--ca-root", "/etc/weft/ca-root/ca.pem",
                                     "--token-file", "/var/run/secrets/weft/token"],
                            "volumeMounts": [
                                {"name": "ca-token", "mountPath": "/var/run/secrets/weft", "readOnly": true},
                                {"name": "ca-root", "mountPath": "/etc/weft/ca-root", "readOnly": true},
                            ],
                            "ports": [
                                {"name": "hbone", "containerPort": 15008},
                                {"name": "metrics", "containerPort": 15020},
                                {"name": "readiness", "containerPort": 15021},
                            ],
                            "readinessProbe": probe("/healthz/ready"),
                            "livenessProbe": probe("/healthz/live"),
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "32Mi"},
                                "limits": {"memory": "128Mi"},
                            },
                            "securityContext": {
                                "runAsNonRoot": true,
                                "runAsUser": 1337,
                                "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": {
                "selector": {"gateway.networking.k8s.io/gateway-name": name},
                "ports": [{"name": "mesh", "port": 15008, "targetPort": 15008, "appProtocol": "hbone"}],
            },
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_objects_name_the_gateway_its_identity_and_its_ports() {
        let docs = objects("demo", "waypoint", "weft-waypoint:test");
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(kinds, ["ServiceAccount", "Deployment", "Service"]);
        let pod = &docs[1]["spec"]["template"];
        assert_eq!(pod["spec"]["serviceAccountName"], "waypoint");
        assert_eq!(pod["metadata"]["labels"][GATEWAY_NAME_LABEL], "waypoint");
        assert_eq!(pod["spec"]["containers"][0]["image"], "weft-waypoint:test");
        assert_eq!(docs[2]["spec"]["ports"][0]["port"], 15008);
        assert_eq!(
            gateway("demo", "waypoint")["spec"]["gatewayClassName"],
            GATEWAY_CLASS
        );
    }
}
