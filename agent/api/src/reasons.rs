//! What every bounded `reason` Weft reports means and what to do about it: one catalogue for
//! the book's troubleshooting reference (`cargo xtask docs-reference`) and `weftctl explain`.

use serde::Serialize;

/// Where a reason shows up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Seen {
    /// An agent's connection record (`weftctl flows`, the access log) and the
    /// `reason` label of `weft_connections_*`.
    Connection,
    /// A waypoint's request record (`weftctl requests`, its access log) and the `reason`
    /// label of `weft_waypoint_requests_total`.
    Request,
    /// A configuration object the agent or waypoint refused (`weftctl status`, rejected
    /// objects; the object's condition in Kubernetes).
    RejectedObject,
    /// A route's `Accepted` or `ResolvedRefs` condition (`weftctl routes`).
    RouteCondition,
    /// The `reason` label of `weft_ebpf_capture_missing_pods`.
    Capture,
}

impl Seen {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Connection => "connection record (`weftctl flows`), `weft_connections_*{reason}`",
            Self::Request => "waypoint request record (`weftctl requests`), `weft_waypoint_requests_total{reason}`",
            Self::RejectedObject => "rejected object (`weftctl status`)",
            Self::RouteCondition => "route condition (`weftctl --waypoint … routes`)",
            Self::Capture => "`weft_ebpf_capture_missing_pods{reason}`",
        }
    }
}

/// One reason: its label value, where it appears, what it means and what to do.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ReasonDoc {
    pub name: &'static str,
    pub seen: &'static [Seen],
    pub meaning: &'static str,
    pub action: &'static str,
}

const fn doc(
    name: &'static str,
    seen: &'static [Seen],
    meaning: &'static str,
    action: &'static str,
) -> ReasonDoc {
    ReasonDoc {
        name,
        seen,
        meaning,
        action,
    }
}

use Seen::{Capture, Connection, RejectedObject, Request, RouteCondition};

/// Every reason, grouped as the reference shows them.
pub const CATALOGUE: &[ReasonDoc] = &[
    // Decisions of L4 and L7 authorization.
    doc("no_policy", &[Connection], "No AuthorizationPolicy selects the destination workload, so the connection was allowed (the mesh default).", "Nothing, if open access is intended. To restrict it, apply an ALLOW policy selecting the workload."),
    doc("allowed_by_policy", &[Connection], "An ALLOW rule of a policy matched; the record names the policy and rule.", "Nothing. `weftctl flows -o json` shows which policy and rule admitted it."),
    doc("denied_by_policy", &[Connection, Request], "A DENY rule matched (DENY wins over ALLOW). The record names the policy and rule.", "If the denial is wrong, narrow the DENY rule; check it first with `dryRun: true`, which records the verdict without enforcing it."),
    doc("no_allow_rule_matched", &[Connection, Request], "ALLOW policies select the workload, but none of their rules matched this caller, port or request.", "Add a rule for the caller (principal, namespace, ipBlocks, port or L7 match), or check that the caller has the identity you expect (`weftctl flows` shows the peer identity; plaintext callers have none)."),
    doc("unreadable_policy", &[Connection, Request], "A policy that selects the workload could not be read; it stands in as a denial of all it may cover (fail closed).", "Fix the policy: `weftctl status` lists it among rejected objects with the field and the problem."),
    doc("l7_requires_waypoint", &[Connection], "A policy with HTTP rules (paths, methods, headers, JWT claims) selects the workload, but no waypoint serves it; the agent cannot judge HTTP at L4, so it denies.", "Serve the Service through a waypoint (label it `weft.io/use-waypoint`), or remove the L7 parts of the rule."),
    doc("strict_mtls_plaintext", &[Connection], "The destination's namespace is in strict mTLS mode and the caller came in plaintext (from outside the mesh).", "Enroll the caller's namespace (`weft.io/mesh: enabled`), or set the destination namespace back to `weft.io/mtls-mode: permissive`."),
    // Connection set-up at the agent.
    doc("none", &[Connection], "Carried with nothing to report: an outbound connection (policy is enforced at the destination) that connected on its first attempt.", "Nothing."),
    doc("retried", &[Connection, Request], "Succeeded, but only after more than one attempt: the agent tried another endpoint after a connect failure, or the waypoint retried the request under its retry policy.", "Nothing at once; if it is frequent, look at the failing endpoint (`weftctl --waypoint … endpoints`, the first attempt's status in the request record)."),
    doc("no_ready_endpoints", &[Connection, Request], "The Service port has no ready endpoint: no pod behind it, or none ready.", "Check the Service's selector and its pods' readiness: `weftctl services` shows the endpoints the mesh knows."),
    doc("no_ready_waypoint", &[Connection], "The Service goes through a waypoint whose pods have no address yet.", "Check the waypoint's Gateway and its pods (`weftctl status` on the agent; the waypoint's own logs); until one is ready the mesh does not bypass it."),
    doc("connect_timeout", &[Connection], "TCP, TLS or the HBONE tunnel was not set up within the connect timeout (time spent waiting behind another tunnel's set-up to the same peer counts).", "Check the destination node is up and reachable on port 15008, and the connect timeout of any TrafficPolicy (`weftctl policies`)."),
    doc("unreachable", &[Connection], "The destination refused the connection or could not be reached (no route, reset); for a mesh destination, its node's port 15008 could not be reached (the agent there is down, or no route).", "Check that the destination pod listens on the port, that the destination node's agent is running, and that the node address is reachable."),
    doc("tunnel_refused", &[Connection], "The destination's HBONE listener answered the CONNECT with an error status (for example a denial by policy there, or no such workload on that node).", "Read the destination agent's record of the same connection (`weftctl --node <dest> flows`): it holds the real reason."),
    doc("tunnel_failed", &[Connection], "The tunnel failed otherwise: the TLS handshake, the peer's identity check, or HTTP/2.", "Compare the trust bundles of both agents (`weftctl certs`), and read the agent log line for the connection."),
    doc("refused_before_tunnel", &[Connection], "An inbound HBONE connection was refused before it carried a tunnel: no TLS, no client certificate, or a handshake past its deadline.", "A non-mesh client is dialling port 15008, or a peer's certificate is not from this trust domain: check the source address in the record."),
    doc("loop_into_agent", &[Connection], "A captured connection would have looped back into the agent (a pod dialled an agent port or 127.0.0.1:15006).", "Do not send application traffic to the agent's ports; see the ports table in ARCHITECTURE.md."),
    // Requests at the waypoint.
    doc("routed", &[Request], "A route rule (or the Service's default route) sent the request to a backend, which answered.", "Nothing. The record names the route, rule and backend."),
    doc("redirected", &[Request], "A RequestRedirect filter answered the request itself (3xx).", "Nothing, if the redirect is intended: `weftctl route-check` shows the rule."),
    doc("no_route", &[Request], "No rule of the routes attached to the Service matched the request: 404.", "Check the request against the routes with `weftctl --waypoint … route-check METHOD URL`, which says why each rule did not match."),
    doc("backend_not_found", &[Request], "The matching rule's backendRef names a Service the waypoint does not know: 500.", "Create the Service or fix the backendRef; `weftctl routes` shows `ResolvedRefs: False` with the missing name."),
    doc("upstream_failed", &[Request], "The backend could not be reached or broke the exchange (reset, protocol error); the waypoint answered 502 or 503.", "Look at the backend pod and its endpoint health (`weftctl --waypoint … endpoints`)."),
    doc("body_too_large", &[Request], "The rule must read the body whole (to mirror or retry it) and the body was over its cap: 413.", "Send smaller bodies on that route, or drop mirroring or retries from it; the cap is in the limits table of ARCHITECTURE.md."),
    doc("overloaded", &[Request], "A waypoint limit was reached (connections, streams or pending requests): 503.", "Scale the waypoint or raise the limit; `weftctl --waypoint … stats` names the limit hit."),
    doc("client_closed", &[Request], "The client went away before the response head was sent.", "Usually the client's own timeout: compare it with the backend's latency."),
    doc("request_body_failed", &[Request], "Reading the request body failed (the client reset the stream).", "A client problem: look at the client's logs."),
    doc("timeout", &[Request], "The rule's `timeouts.request` or `timeouts.backendRequest` passed first: 504.", "Raise the timeout on the route, or find why the backend is slow (`weftctl … endpoints` shows latency averages)."),
    doc("retry_budget_exhausted", &[Request], "A retry was due but the retry budget had none left, so the last answer stands.", "The backend is failing broadly; retries would only add load. Fix the backend, or raise the budget if the failure rate is expected."),
    doc("circuit_open", &[Request], "A circuit-breaker limit of the backend Service (connections, pending or active requests) was reached: 503 at once.", "The backend is saturated: scale it, or raise the TrafficPolicy's limits; `weft_waypoint_circuit_breaker_occupancy` shows how full it is."),
    doc("endpoint_ejected", &[Request], "This request's answer made outlier detection eject its endpoint for a while.", "Look at that endpoint (`weftctl --waypoint … endpoints` shows ejections and when they end)."),
    doc("rate_limited", &[Request], "Over the local rate limit: 429 with `retry-after`.", "Expected under load; raise the limit in the TrafficPolicy if the traffic is legitimate."),
    doc("fault_injected", &[Request], "Fault injection delayed or aborted the request, as configured.", "Nothing, during a test; remove the fault from the TrafficPolicy when done."),
    doc("no_healthy_endpoint", &[Request], "Every endpoint of the backend is ejected or failing its health check: 503.", "Fix the backend's pods; ejections end on their own after their interval."),
    // JSON Web Tokens at the waypoint (401).
    doc("jwt_malformed", &[Request], "The bearer token is not a signed JWT, or is over the size cap.", "Check what the client sends in `Authorization: Bearer`."),
    doc("jwt_algorithm_refused", &[Request], "The token is signed with an algorithm that is not accepted (none, HS*).", "Sign tokens with RS*, PS*, ES256, ES384 or EdDSA under a key of the issuer's key set."),
    doc("jwt_unknown_key", &[Request], "No key with the token's `kid` is in the issuer's key set.", "The issuer rotated keys: check the key set (jwks) the RequestAuthentication names."),
    doc("jwt_bad_signature", &[Request], "No key of the issuer's set verifies the signature.", "The token was not signed by this issuer, or was altered."),
    doc("jwt_expired", &[Request], "The token has expired.", "The client must refresh its token."),
    doc("jwt_not_yet_valid", &[Request], "The token's `nbf` is in the future.", "Check the clocks of the issuer and the node."),
    doc("jwt_wrong_issuer", &[Request], "The token's issuer is not one the RequestAuthentication names.", "Add a jwtRule for the issuer, or send a token from an accepted one."),
    doc("jwt_wrong_audience", &[Request], "The token's audiences include none of the rule's.", "Request a token for the right audience, or add it to the rule's `audiences`."),
    doc("jwks_unavailable", &[Request], "The issuer's key set could not be fetched yet, so no token can be verified.", "Check that the waypoint can reach the jwksUri; its log names the fetch error."),
    // Configuration objects refused.
    doc("unreadable_file", &[RejectedObject], "A manifest file in the local-mode folder could not be read or parsed as YAML; its last good version, if it had one, stays in force.", "Fix the file: `weftctl status` names it and the parse error (line and column)."),
    doc("unlistable_folder", &[RejectedObject], "The local-mode manifest folder could not be listed (missing, or no permission).", "Check the `--manifests` path and its permissions; the objects read before stay in force."),
    doc("unknown_kind", &[RejectedObject], "An object with no kind, or a kind Weft does not read.", "Check `apiVersion` and `kind`; chapter 11 of the book lists the kinds local mode reads."),
    doc("bad_field", &[RejectedObject], "A field is unknown or has the wrong type.", "`weftctl status` names the field: fix its spelling or type."),
    doc("bad_address", &[RejectedObject], "An address that must be IPv4 is not.", "Weft captures IPv4 only: give an IPv4 address."),
    doc("missing_field", &[RejectedObject], "A required field is missing (for example a policy with no rules, or no targets).", "Add the field `weftctl status` names."),
    doc("bad_port", &[RejectedObject], "A port or targetPort is not a port number (or a port name that resolves).", "Use a number from 1 to 65535, or a name the EndpointSlice defines."),
    doc("bad_ip_block", &[RejectedObject], "An ipBlocks or notIpBlocks entry is not a CIDR, or its prefix is out of range.", "Write it as `a.b.c.d/n` with n from 0 to 32."),
    doc("bad_target", &[RejectedObject], "A policy's targetRef names something it cannot attach to.", "Target a Service or a Gateway of class `weft-waypoint`."),
    doc("bad_duration", &[RejectedObject], "A duration is not one (Gateway API form: `1s`, `500ms`, `1h30m`).", "Write it as a number with a unit: h, m, s or ms."),
    doc("out_of_range", &[RejectedObject], "A value is outside what it may be: a zero duration, count or limit, a percentage over 100, or an HTTP status that is not one.", "Use a value in range; `weftctl status` names the field."),
    doc("bad_value", &[RejectedObject], "A value is not one the field accepts, or a condition has no values.", "See the field's allowed values in the CRD (deploy/crds)."),
    doc("bad_condition_key", &[RejectedObject], "A policy condition's key is not one Weft knows.", "Use a supported key (`request.headers[...]`, `source.ip`, `request.auth.claims[...]`, …)."),
    // Route conditions.
    doc("Accepted", &[RouteCondition], "The route is attached to its parent and at least one of its rules can be used.", "Nothing."),
    doc("UnsupportedValue", &[RouteCondition], "No rule of the route could be used: each uses something the waypoint does not support.", "Read the route's message; `weftctl route-check` shows what each rule would do."),
    doc("ResolvedRefs", &[RouteCondition], "Every Service the route refers to (its backendRefs and its RequestMirror targets) is known.", "Nothing."),
    doc("BackendNotFound", &[RouteCondition], "A reference names a Service that does not exist: a backendRef (requests to that rule get 500 `backend_not_found`) or a mirror target (its copies are dropped).", "Create the Service or fix the reference; the condition's message names it."),
    // Capture.
    doc("attach_failed", &[Capture], "The capture program could not be attached in an enrolled pod's network namespace; its traffic bypasses the mesh.", "The agent log names the kernel error (often a missing kernel feature); `weftctl status` lists the pod."),
    doc("no_netns", &[Capture], "An enrolled pod's network namespace was not found, so capture could not be placed; its traffic bypasses the mesh.", "Check the pod is running on this node and the agent can see its netns (hostPID / the CRI's netns path)."),
];

/// The catalogue entry for `name`, if there is one.
pub fn find(name: &str) -> Option<&'static ReasonDoc> {
    CATALOGUE.iter().find(|r| r.name == name)
}
