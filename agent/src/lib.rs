//! r3s-agent: the node agent (kubelet's role, plus the service proxy and node-local DNS).
