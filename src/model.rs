//! The tailnet model: what `resolve` produces and every later stage reads. All references are
//! checked, names are normalised (`tag:`/`group:` prefixes), CIDRs are parsed. Order is the
//! spec's declaration order unless a field says otherwise.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The Tailscale IPv6 ULA range.
pub const TAILNET_V6: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0), 48);

/// The CGNAT range every tailnet IPv4 pool lies in (and the default pool).
pub const CGNAT: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10);

#[derive(Clone, Debug)]
pub struct Tailnet {
    pub name: String,
    /// DNS suffix: `<node>.<domain>`.
    pub domain: String,
    /// The tailnet's MagicDNS suffix on Tailscale/headscale (`tail1234.ts.net`, no trailing
    /// dot): Tailscale-image egress names its target `<host>.<suffix>.`.
    pub magicdns_suffix: Option<String>,
    pub ipv4_pool: Ipv4Net,
    /// Known users (emails): declared, group members, device owners; sorted, unique.
    pub users: Vec<String>,
    /// `group:name` → member emails.
    pub groups: Vec<(String, Vec<String>)>,
    /// `tag:name` → owners (`group:…`, `tag:…`, user emails, autogroups).
    pub tags: Vec<(String, Vec<String>)>,
    pub hosts: Vec<(String, IpNet)>,
    pub devices: Vec<Device>,
    pub clusters: Vec<Cluster>,
    pub acls: Vec<Acl>,
    pub grants: Vec<Grant>,
    pub tests: Vec<AclTest>,
    pub ssh: Vec<SshRule>,
    pub gitops: Option<Gitops>,
    /// Policy sections carried through verbatim (`verbatim` nodes), in spec order.
    pub verbatim: Vec<(String, serde_json::Value)>,
    /// Name → position of clusters and devices, built on first lookup (lowering looks names
    /// up per node; a scan made that nodes × clusters).
    pub lookup: std::sync::OnceLock<Lookup>,
}

#[derive(Clone, Debug, Default)]
pub struct Lookup {
    clusters: std::collections::HashMap<String, usize>,
    devices: std::collections::HashMap<String, usize>,
}

#[derive(Clone, Debug)]
pub struct Device {
    pub name: String,
    pub user: Option<String>,
    pub public_key: String,
    /// Where the private key lives on the device (used in `PostUp`).
    pub key_path: String,
    pub tags: Vec<String>,
}

/// How a cluster's nodes publish their WireGuard UDP port (`publish=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publish {
    /// One runtime Deployment per cluster (`tsk8s-gateway`) terminates WireGuard for every
    /// proxy, subnet router and egress node and relays sidecars' datagrams to their pods, on one
    /// UDP port behind one `LoadBalancer` Service.
    Gateway,
    /// One `LoadBalancer` Service per node.
    LoadBalancer,
    /// One `NodePort` Service per node, `externalTrafficPolicy: Cluster`.
    NodePort,
}

/// How a sidecar's runtime joins the user's pod (`sidecar-style=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarStyle {
    /// A native sidecar: an init container with `restartPolicy: Always` (Kubernetes 1.29+).
    /// It starts before the app's containers and is never `kubectl`'s default container.
    Native,
    /// A plain container beside the app's (older clusters).
    Container,
}

/// The gateway's UDP port unless the cluster says otherwise (`gateway-port=`; Tailscale's
/// default WireGuard port).
pub const DEFAULT_GATEWAY_PORT: u16 = 41641;

/// The name of a cluster's gateway (objects `tsk8s-gateway`); no exposure of a gateway cluster
/// may take it.
pub const GATEWAY_NAME: &str = "gateway";

/// The placeholder in a cluster `endpoint` that stands for each node's tailnet name.
pub const NODE_PLACEHOLDER: &str = "{node}";

/// How the cluster's WireGuard Services are published, beyond the mode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceOptions {
    /// `service-annotations`, in spec order.
    pub annotations: Vec<(String, String)>,
    pub load_balancer_class: Option<String>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// MetalLB: the address every LoadBalancer Service of the cluster shares.
    pub shared_ip: Option<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Our own data plane; nodes take lock entries.
    Tsk8s,
    /// The official `tailscale/tailscale` image; Tailscale assigns addresses and keys.
    Tailscale,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretBackend {
    /// A Secret created by hand (`kubectl create secret`); build emits only the reference.
    Existing,
    /// External Secrets Operator.
    ExternalSecrets {
        store: String,
        store_kind: String,
        /// Remote key prefix; a node's key is at `<prefix><cluster>/<node>`, property `private-key`.
        key_prefix: String,
        refresh_interval: String,
    },
    /// SOPS-encrypted Secrets committed under `source_dir` beside the spec.
    Sops {
        recipients: Vec<String>,
        source_dir: String,
    },
    /// SealedSecrets provided by the user under `source_dir` beside the spec.
    SealedSecrets { source_dir: String },
}

#[derive(Clone, Debug)]
pub struct Cluster {
    pub name: String,
    pub namespace: String,
    pub pod_cidr: Option<IpNet>,
    pub service_cidr: Option<IpNet>,
    /// Host (or IP) devices reach the nodes on; may hold [`NODE_PLACEHOLDER`] (see
    /// [`Cluster::endpoint_host`]).
    pub endpoint: String,
    pub publish: Publish,
    /// `publish="gateway"`: the one UDP port of the cluster's gateway (and its Service).
    pub gateway_port: u16,
    pub services: ServiceOptions,
    pub sidecar_style: SidecarStyle,
    pub image: String,
    pub runtime: RuntimeKind,
    /// `runtime="tailscale"`: the port containerboot serves `/healthz` on in each pod
    /// (`TS_LOCAL_ADDR_PORT`; default [`DEFAULT_HEALTH_PORT`]).
    pub health_port: u16,
    pub secrets: SecretBackend,
    pub auth: TailscaleAuth,
    pub gitops: ClusterGitops,
    pub exposures: Vec<Exposure>,
}

/// containerboot's default `TS_LOCAL_ADDR_PORT` port (cmd/containerboot/settings.go).
pub const DEFAULT_HEALTH_PORT: u16 = 9002;

/// Port of the runtime's `/healthz` and `/metrics` server inside the pod.
pub const ADMIN_PORT: u16 = 9901;

impl Cluster {
    /// The host a node with tailnet name `node` is reached on.
    pub fn endpoint_host(&self, node: &str) -> String {
        self.endpoint.replace(NODE_PLACEHOLDER, node)
    }

    /// Whether `endpoint` names each node's own host (`{node}.…`).
    pub fn endpoint_per_node(&self) -> bool {
        self.endpoint.contains(NODE_PLACEHOLDER)
    }

    /// `externalTrafficPolicy` of the WireGuard Services: `Local` keeps devices' source
    /// addresses (WireGuard roams on them) where the Service allows it; a NodePort reached on
    /// any node, and MetalLB address sharing, need `Cluster`.
    pub fn external_traffic_policy(&self) -> &'static str {
        match self.publish {
            Publish::NodePort => "Cluster",
            Publish::LoadBalancer | Publish::Gateway if self.services.shared_ip.is_some() => {
                "Cluster"
            }
            Publish::LoadBalancer | Publish::Gateway => "Local",
        }
    }

    /// Whether node `e` runs inside the cluster's gateway (`publish="gateway"`: every node but
    /// the sidecars, which keep their own pods and are relayed to).
    pub fn in_gateway(&self, e: &Exposure) -> bool {
        self.publish == Publish::Gateway && !matches!(e.kind, ExposureKind::Sidecar { .. })
    }

    /// The UDP port devices and other clusters reach node `e` on: the gateway's under
    /// `publish="gateway"` (sidecars included: the gateway relays them), else its own
    /// (`lock_port`, from the lock).
    pub fn published_port(&self, lock_port: u16) -> u16 {
        match self.publish {
            Publish::Gateway => self.gateway_port,
            Publish::LoadBalancer | Publish::NodePort => lock_port,
        }
    }

    /// Whether peers reach this cluster's nodes through SNAT (`Cluster` traffic policy): the
    /// runtime then sees a node's address, and the NAT mapping must be kept alive from the
    /// peer's side.
    pub fn needs_keepalive(&self) -> bool {
        self.external_traffic_policy() == "Cluster"
    }
}

/// How Tailscale-image nodes authenticate (ignored for the tsk8s runtime).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TailscaleAuth {
    pub ephemeral: bool,
    pub reusable: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterGitops {
    /// Argo CD destination (`server` URL or cluster `name`).
    pub argocd_server: Option<String>,
    pub argocd_name: Option<String>,
    /// Flux source (GitRepository) name and namespace.
    pub flux_source: Option<String>,
    pub flux_namespace: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GitopsFlavour {
    ArgoCd {
        application_set: bool,
        project: String,
        namespace: String,
    },
    Flux {
        namespace: String,
        interval: String,
    },
}

#[derive(Clone, Debug)]
pub struct Gitops {
    pub flavour: GitopsFlavour,
    pub repo_url: String,
    pub revision: String,
    /// Path of the output dir inside the GitOps repo (e.g. `deploy/tailnet`).
    pub path: String,
}

#[derive(Clone, Debug)]
pub struct Exposure {
    /// The exposure's name in the spec: unique across the tailnet; names the k8s objects.
    pub id: String,
    /// The node's tailnet name (DNS label); defaults to `id`.
    pub hostname: String,
    pub tags: Vec<String>,
    pub kind: ExposureKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub protocol: Proto,
    /// Port on the node's tailnet address (proxy, sidecar) or the cluster listener (egress).
    pub port: u16,
    /// Port on the target.
    pub target: u16,
    /// proxy: the port the target Service's pods listen on (`pod-port=`), if given. A
    /// NetworkPolicy sees packets after the Service's DNAT, so it must allow this port, not
    /// `target`; without it the proxy may reach any port of the protocol on the target's pods.
    pub pod_port: Option<u16>,
}

/// The most pods a StatefulSet sidecar may run (`replicas=`): each is a node with its own key,
/// addresses, lock entry and Service, and every pod mounts all of them.
pub const MAX_SIDECAR_REPLICAS: u32 = 64;

/// One pod's node of a StatefulSet sidecar with `replicas=N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarSet {
    /// The sidecar's name in the spec (`<base>-<ordinal>` is this node's id).
    pub base: String,
    /// The pod's ordinal (`apps.kubernetes.io/pod-index`).
    pub ordinal: u32,
    pub replicas: u32,
}

#[derive(Clone, Debug)]
pub enum EgressTarget {
    Device(String),
    Host(String, IpAddr),
    Node(String),
}

#[derive(Clone, Debug)]
pub enum ExposureKind {
    Proxy {
        namespace: String,
        service: String,
        ports: Vec<Port>,
    },
    Sidecar {
        namespace: String,
        workload: String,
        workload_kind: String,
        ports: Vec<Port>,
        /// A StatefulSet sidecar with `replicas=N` (N ≥ 2) is N nodes `<name>-0` …
        /// `<name>-N-1`, one per pod: which one this is.
        set: Option<SidecarSet>,
    },
    SubnetRouter {
        routes: Vec<IpNet>,
    },
    Egress {
        target: EgressTarget,
        ports: Vec<Port>,
    },
}

impl ExposureKind {
    pub fn keyword(&self) -> &'static str {
        match self {
            ExposureKind::Proxy { .. } => "proxy",
            ExposureKind::Sidecar { .. } => "sidecar",
            ExposureKind::SubnetRouter { .. } => "subnet-router",
            ExposureKind::Egress { .. } => "egress",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Acl {
    pub src: Vec<String>,
    pub dst: Vec<String>,
    pub proto: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Grant {
    pub src: Vec<String>,
    pub dst: Vec<String>,
    pub ip: Vec<String>,
    pub via: Vec<String>,
    /// capability → values (JSON objects).
    pub app: Vec<(String, Vec<serde_json::Value>)>,
}

#[derive(Clone, Debug)]
pub struct AclTest {
    pub src: String,
    pub proto: Option<String>,
    /// `check="policy"`: `tsk8s test` judges it by the policy alone, not the emitted network.
    pub policy_only: bool,
    pub accept: Vec<String>,
    pub deny: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct SshRule {
    pub action: String,
    pub src: Vec<String>,
    pub dst: Vec<String>,
    pub users: Vec<String>,
    pub check_period: Option<String>,
}

impl Tailnet {
    fn lookup(&self) -> &Lookup {
        self.lookup.get_or_init(|| Lookup {
            clusters: self
                .clusters
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect(),
            devices: self
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| (d.name.clone(), i))
                .collect(),
        })
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.get(self.cluster_index(name)?)
    }

    /// The position of cluster `name` in `clusters`.
    pub fn cluster_index(&self, name: &str) -> Option<usize> {
        match self.lookup().clusters.get(name) {
            Some(&i) if self.clusters.get(i).is_some_and(|c| c.name == name) => Some(i),
            // Not indexed (or the list changed after indexing): scan.
            _ => self.clusters.iter().position(|c| c.name == name),
        }
    }

    pub fn device(&self, name: &str) -> Option<&Device> {
        match self
            .lookup()
            .devices
            .get(name)
            .and_then(|&i| self.devices.get(i))
        {
            Some(d) if d.name == name => Some(d),
            _ => self.devices.iter().find(|d| d.name == name),
        }
    }

    /// Every exposure with its cluster, in declaration order.
    pub fn exposures(&self) -> impl Iterator<Item = (&Cluster, &Exposure)> {
        self.clusters
            .iter()
            .flat_map(|c| c.exposures.iter().map(move |e| (c, e)))
    }

    /// Exposures that run tsk8s-runtime (and so take lock entries and keys).
    pub fn runtime_nodes(&self) -> impl Iterator<Item = (&Cluster, &Exposure)> {
        self.exposures()
            .filter(|(c, _)| c.runtime == RuntimeKind::Tsk8s)
    }
}
