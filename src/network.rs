//! Keys, rosters and local test networks: the offline half of `consentctl`.
//!
//! A network is trusted through one root key. `network init` makes a whole local network in one
//! step (for tests and demos); the production path is `keygen` on each office's host, `roster add`
//! for each office's public keys, and `roster sign` on the machine that holds the root key.

use crate::config::{ClockConfig, Config, ControlConfig, LogConfig, PeerConfig};
use consentd_sync::keys;
use consentd_sync::roster::{OfficeEntry, Roster, SignedRoster};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

/// Most offices `network init` creates.
pub const INIT_OFFICES_MAX: usize = 64;

/// The company's offices and their jurisdictions (INTERFACE.md).
pub const KNOWN_OFFICES: &[(&str, &str)] = &[
    ("us", "US"),
    ("sg", "SG"),
    ("de", "DE"),
    ("cn", "CN"),
    ("co", "CO"),
    ("au", "AU"),
    ("uk", "GB"),
    ("nl", "NL"),
];

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NetworkError(String);

fn err(message: impl Into<String>) -> NetworkError {
    NetworkError(message.into())
}

impl From<keys::KeyError> for NetworkError {
    fn from(e: keys::KeyError) -> Self {
        NetworkError(e.to_string())
    }
}

impl From<consentd_sync::roster::RosterError> for NetworkError {
    fn from(e: consentd_sync::roster::RosterError) -> Self {
        NetworkError(e.to_string())
    }
}

/// Parses `--offices us,sg,de` (or `fr=FR` for an office not in the company's list).
pub fn parse_offices(list: &str) -> Result<Vec<(String, String)>, NetworkError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, jurisdiction) = match item.split_once('=') {
            Some((id, j)) => (id.to_string(), j.to_string()),
            None => {
                let j = KNOWN_OFFICES
                    .iter()
                    .find(|(o, _)| *o == item)
                    .map(|(_, j)| j.to_string())
                    .ok_or_else(|| {
                        err(format!(
                            "unknown office {item:?}: known offices are {}; name others as id=JURISDICTION (e.g. fr=FR)",
                            KNOWN_OFFICES.iter().map(|(o, _)| *o).collect::<Vec<_>>().join(",")
                        ))
                    })?;
                (item.to_string(), j)
            }
        };
        if !crate::config::is_office_id(&id) {
            return Err(err(format!("invalid office id {id:?}")));
        }
        if out.iter().any(|(o, _)| *o == id) {
            return Err(err(format!("office {id:?} is named twice")));
        }
        out.push((id, jurisdiction));
    }
    if out.is_empty() {
        return Err(err(
            "--offices needs at least one office, e.g. --offices de,sg",
        ));
    }
    if out.len() > INIT_OFFICES_MAX {
        return Err(err(format!("at most {INIT_OFFICES_MAX} offices")));
    }
    Ok(out)
}

/// Creates a complete local network under `dir`. Refuses to touch a directory that already holds one.
pub fn init(
    dir: &Path,
    offices: &[(String, String)],
    base_port: Option<u16>,
    network: &str,
) -> Result<Value, NetworkError> {
    if dir.join("root.key").exists() || dir.join("roster.json").exists() {
        return Err(err(format!(
            "{} already holds a network (root.key or roster.json exists); choose an empty directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| err(format!("cannot resolve {}: {e}", dir.display())))?;
    let ports = match base_port {
        Some(base) => {
            let last = u32::from(base) + offices.len() as u32 - 1;
            if base == 0 || last > u32::from(u16::MAX) {
                return Err(err(format!(
                    "--base-port {base} leaves no room for {} offices",
                    offices.len()
                )));
            }
            (0..offices.len() as u16).map(|i| base + i).collect()
        }
        None => free_udp_ports(offices.len())?,
    };

    let root = keys::generate();
    keys::write_secret_key(&dir.join("root.key"), &root)?;
    let root_pub = keys::public_hex(&root.verifying_key());
    write_file(&dir.join("root.pub"), &format!("{root_pub}\n"))?;

    let mut roster = Roster::new(network)?;
    let uid = unsafe { libc::getuid() };
    let addresses: Vec<SocketAddr> = ports
        .iter()
        .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, *p)))
        .collect();
    for (i, (id, jurisdiction)) in offices.iter().enumerate() {
        let office_dir = dir.join(id);
        std::fs::create_dir_all(&office_dir)
            .map_err(|e| err(format!("cannot create {}: {e}", office_dir.display())))?;
        let signing = keys::generate();
        let transport = keys::generate();
        keys::write_secret_key(&office_dir.join("signing.key"), &signing)?;
        keys::write_secret_key(&office_dir.join("transport.key"), &transport)?;
        keys::write_secret32(&office_dir.join("index.key"), &keys::generate_secret32())?;
        roster.add_office(OfficeEntry {
            id: id.clone(),
            jurisdiction: jurisdiction.clone(),
            signing_key: keys::public_hex(&signing.verifying_key()),
            transport_key: keys::public_hex(&transport.verifying_key()),
            address: addresses[i].to_string(),
            retired: false,
        })?;
        let config = Config {
            office: id.clone(),
            jurisdiction: jurisdiction.clone(),
            data_dir: office_dir.join("data"),
            roster: dir.join("roster.json"),
            root_pub: root_pub.clone(),
            signing_key: office_dir.join("signing.key"),
            transport_key: office_dir.join("transport.key"),
            index_key: office_dir.join("index.key"),
            listen: addresses[i],
            allow_roster_rollback: false,
            control: ControlConfig {
                socket: office_dir.join("control.sock"),
                socket_mode: "0660".into(),
                operators: vec![uid],
                auditors: vec![],
            },
            peers: offices
                .iter()
                .zip(&addresses)
                .filter(|((o, _), _)| o != id)
                .map(|((o, _), a)| PeerConfig {
                    office: o.clone(),
                    address: *a,
                })
                .collect(),
            log: LogConfig::default(),
            // Written out so that the operator sees which zone the office's own dates are in.
            clock: ClockConfig {
                time_zone: Some(
                    crate::clock::office_zone_default(jurisdiction)
                        .name()
                        .into(),
                ),
                ..ClockConfig::default()
            },
            consent: Default::default(),
            transfer: Default::default(),
            retention: Default::default(),
        };
        let text = format!(
            "# consentd configuration for office {id} ({jurisdiction}), written by consentctl network init.\n{}",
            config.to_toml()
        );
        write_file(&office_dir.join("consentd.toml"), &text)?;
    }
    let signed = roster.sign(&root)?;
    signed.save(&dir.join("roster.json"))?;
    Ok(json!({
        "dir": dir,
        "network": network,
        "root_pub": root_pub,
        "offices": offices.iter().zip(&addresses).map(|((o, j), a)| json!({
            "office": o, "jurisdiction": j, "listen": a.to_string(),
            "config": dir.join(o).join("consentd.toml"),
            "socket": dir.join(o).join("control.sock"),
        })).collect::<Vec<_>>(),
    }))
}

/// Asks the kernel for distinct free UDP ports on loopback (QUIC listens on UDP).
fn free_udp_ports(n: usize) -> Result<Vec<u16>, NetworkError> {
    // Hold every socket until all are chosen, so the kernel cannot hand out one port twice.
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("cannot find a free port: {e}")))?;
    sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("cannot find a free port: {e}")))
}

fn write_file(path: &Path, text: &str) -> Result<(), NetworkError> {
    std::fs::write(path, text).map_err(|e| err(format!("cannot write {}: {e}", path.display())))
}

/// `consentctl keygen`: an office's key set, or with `root` the network's root key.
pub fn keygen(out: &Path, root: bool) -> Result<Value, NetworkError> {
    std::fs::create_dir_all(out)
        .map_err(|e| err(format!("cannot create {}: {e}", out.display())))?;
    if root {
        let key = keys::generate();
        keys::write_secret_key(&out.join("root.key"), &key)?;
        let public = keys::public_hex(&key.verifying_key());
        write_file(&out.join("root.pub"), &format!("{public}\n"))?;
        return Ok(json!({
            "root_key": out.join("root.key"),
            "root_pub": public,
        }));
    }
    let signing = keys::generate();
    let transport = keys::generate();
    keys::write_secret_key(&out.join("signing.key"), &signing)?;
    keys::write_secret_key(&out.join("transport.key"), &transport)?;
    keys::write_secret32(&out.join("index.key"), &keys::generate_secret32())?;
    Ok(json!({
        "signing_key": out.join("signing.key"),
        "transport_key": out.join("transport.key"),
        "index_key": out.join("index.key"),
        "signing_pub": keys::public_hex(&signing.verifying_key()),
        "transport_pub": keys::public_hex(&transport.verifying_key()),
    }))
}

/// `consentctl roster new`: an empty, unsigned roster.
pub fn roster_new(path: &Path, network: &str) -> Result<Value, NetworkError> {
    if path.exists() {
        return Err(err(format!("{} already exists", path.display())));
    }
    SignedRoster::draft(Roster::new(network)?).save(path)?;
    Ok(json!({ "roster": path, "network": network, "signed": false }))
}

pub struct NewOffice {
    pub id: String,
    pub jurisdiction: String,
    pub signing_pub: String,
    pub transport_pub: String,
    pub address: String,
}

/// `consentctl roster add`: adds an office; the roster must be signed again afterwards.
pub fn roster_add(path: &Path, office: NewOffice) -> Result<Value, NetworkError> {
    let signed = SignedRoster::load(path)?;
    let mut roster = signed.roster;
    let signing = keys::read_public_key(&office.signing_pub)?;
    let transport = keys::read_public_key(&office.transport_pub)?;
    roster.add_office(OfficeEntry {
        id: office.id.clone(),
        jurisdiction: office.jurisdiction,
        signing_key: keys::public_hex(&signing),
        transport_key: keys::public_hex(&transport),
        address: office.address,
        retired: false,
    })?;
    // A changed roster is a new version; offices prefer the highest serial they have verified.
    roster.serial += 1;
    let serial = roster.serial;
    SignedRoster::draft(roster).save(path)?;
    Ok(json!({
        "roster": path, "added": office.id, "serial": serial, "signed": false,
        "next": format!("consentctl roster sign --roster {} --root-key ROOT.KEY", path.display()),
    }))
}

/// `consentctl roster retire`: marks an office retired and bumps the serial; the roster must be
/// signed again. The office stays listed: its keys still verify what it signed.
pub fn roster_retire(path: &Path, office: &str) -> Result<Value, NetworkError> {
    let mut roster = SignedRoster::load(path)?.roster;
    roster.retire_office(office)?;
    let serial = roster.serial;
    SignedRoster::draft(roster).save(path)?;
    Ok(json!({
        "roster": path, "retired": office, "serial": serial, "signed": false,
        "next": format!("consentctl roster sign --roster {} --root-key ROOT.KEY", path.display()),
    }))
}

/// `consentctl roster sign`: signs with the root key, in place.
pub fn roster_sign(path: &Path, root_key: &Path) -> Result<Value, NetworkError> {
    let root = keys::read_secret_key(root_key)?;
    let signed = SignedRoster::load(path)?;
    let serial = signed.roster.serial;
    let offices = signed.roster.offices.len();
    signed.roster.sign(&root)?.save(path)?;
    Ok(json!({
        "roster": path, "serial": serial, "offices": offices, "signed": true,
        "root_pub": keys::public_hex(&root.verifying_key()),
    }))
}

/// `consentctl roster verify`: checks a roster against a root public key.
pub fn roster_verify(path: &Path, root_pub: &str) -> Result<Value, NetworkError> {
    let root = keys::read_public_key(root_pub)?;
    let verified = SignedRoster::load(path)?.verify(&root)?;
    let r = verified.roster();
    Ok(json!({
        "roster": path, "network": r.network, "serial": r.serial, "valid": true,
        "offices": r.offices.iter().map(|o| json!({
            "office": o.id, "jurisdiction": o.jurisdiction, "address": o.address,
            "signing_key": o.signing_key, "transport_key": o.transport_key,
            "retired": o.retired,
        })).collect::<Vec<_>>(),
    }))
}

/// The default directory name for `network init` when none is given: never used implicitly.
pub fn office_config_path(dir: &Path, office: &str) -> PathBuf {
    dir.join(office).join("consentd.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offices_map_to_jurisdictions() {
        let o = parse_offices("us,uk,fr=FR").unwrap();
        assert_eq!(o[1], ("uk".into(), "GB".into()));
        assert_eq!(o[2], ("fr".into(), "FR".into()));
        assert!(parse_offices("zz").is_err());
        assert!(parse_offices("de,de").is_err());
        assert!(parse_offices("").is_err());
    }

    #[test]
    fn init_writes_a_verifiable_network_with_private_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let offices = parse_offices("de,sg").unwrap();
        init(dir.path(), &offices, Some(47100), "test").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("root.key")), 0o600);
        assert_eq!(mode(&dir.path().join("de/signing.key")), 0o600);
        let root_pub = std::fs::read_to_string(dir.path().join("root.pub")).unwrap();
        roster_verify(&dir.path().join("roster.json"), root_pub.trim()).unwrap();
        let de = Config::load(&dir.path().join("de/consentd.toml")).unwrap();
        assert_eq!(de.listen.port(), 47100);
        assert_eq!(de.peers.len(), 1);
        assert_eq!(de.peers[0].address.port(), 47101);
        assert!(
            init(dir.path(), &offices, None, "test").is_err(),
            "second init refused"
        );
    }
}
