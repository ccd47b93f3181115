//! Defender machines as tests and the demo describe them ([`MachineSpec`], [`AvSpec`]), rendered
//! as the Machine entity of `GET /api/machines` and the row of `GET /api/deviceavinfo`; and the
//! machines every provisioned tenant starts with.

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::hex_id;
use super::store::fmt_time;

/// `healthStatus` of a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthStatus {
    Active,
    Inactive,
    ImpairedCommunication,
    NoSensorData,
    NoSensorDataImpairedCommunication,
    Unknown,
}

impl HealthStatus {
    pub const ALL: [&'static str; 6] =
        ["Active", "Inactive", "ImpairedCommunication", "NoSensorData", "NoSensorDataImpairedCommunication", "Unknown"];

    pub fn as_str(self) -> &'static str {
        Self::ALL[self as usize]
    }
}

/// `onboardingStatus` of a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnboardingStatus {
    Onboarded,
    CanBeOnboarded,
    Unsupported,
    InsufficientInfo,
}

impl OnboardingStatus {
    pub const ALL: [&'static str; 4] = ["Onboarded", "CanBeOnboarded", "Unsupported", "InsufficientInfo"];

    pub fn as_str(self) -> &'static str {
        Self::ALL[self as usize]
    }
}

/// Microsoft Defender Antivirus mode, reported by `deviceavinfo` as a string code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AvMode {
    /// `"0"`
    Active,
    /// `"1"`: another antivirus product is primary; Defender does not remediate.
    Passive,
    /// `"2"`
    Disabled,
    /// `"3"`
    Other,
    /// `"4"`: EDR in block mode.
    EdrBlocked,
    /// `"5"`
    PassiveAudit,
    /// `""`, which the docs also call Other.
    Unreported,
}

impl AvMode {
    /// The `avMode` string.
    pub fn code(self) -> &'static str {
        match self {
            AvMode::Active => "0",
            AvMode::Passive => "1",
            AvMode::Disabled => "2",
            AvMode::Other => "3",
            AvMode::EdrBlocked => "4",
            AvMode::PassiveAudit => "5",
            AvMode::Unreported => "",
        }
    }
}

/// Antivirus health of one machine, as `GET /api/deviceavinfo` reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct AvSpec {
    pub mode: AvMode,
    /// The antimalware client version, e.g. `4.18.24090.11` (file indicators need ≥ 4.18.1901).
    pub platform_version: String,
    pub engine_version: String,
    pub signature_version: String,
    /// `avIs…UpToDate`: `Some(true)` → `"True"`, `Some(false)` → `"False"`, `None` → `"Unknown"`.
    pub platform_up_to_date: Option<bool>,
    pub engine_up_to_date: Option<bool>,
    pub signature_up_to_date: Option<bool>,
    /// When the platform was last updated on the device.
    pub platform_updated: Timestamp,
    /// When the engine and signatures were last updated on the device.
    pub signature_updated: Timestamp,
}

impl Default for AvSpec {
    /// Active mode, a current platform, everything up to date.
    fn default() -> Self {
        let now = Timestamp::now();
        AvSpec {
            mode: AvMode::Active,
            platform_version: "4.18.24090.11".into(),
            engine_version: "1.1.24090.11".into(),
            signature_version: "1.419.163.0".into(),
            platform_up_to_date: Some(true),
            engine_up_to_date: Some(true),
            signature_up_to_date: Some(true),
            platform_updated: now - SignedDuration::from_hours(24 * 9),
            signature_updated: now - SignedDuration::from_hours(3),
        }
    }
}

impl AvSpec {
    pub fn mode(mut self, mode: AvMode) -> Self {
        self.mode = mode;
        self
    }

    /// Platform version and whether Defender calls it up to date.
    pub fn platform(mut self, version: &str, up_to_date: Option<bool>) -> Self {
        self.platform_version = version.into();
        self.platform_up_to_date = up_to_date;
        self
    }

    /// `defenderAvStatus` of the Machine entity (its values are only observed, not documented).
    pub(crate) fn defender_av_status(&self) -> &'static str {
        let flags = [self.platform_up_to_date, self.engine_up_to_date, self.signature_up_to_date];
        if self.mode == AvMode::Disabled {
            "Disabled"
        } else if flags.contains(&Some(false)) {
            "NotUpdated"
        } else if flags.iter().all(|f| *f == Some(true)) {
            "Updated"
        } else {
            "Unknown"
        }
    }
}

/// A machine for [`Emulator::put_machine`](super::Emulator::put_machine). `MachineSpec::new`
/// gives an onboarded, active Windows 11 machine with a healthy antivirus, last seen 5 minutes
/// ago; the builder methods change one aspect each.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineSpec {
    /// 40 hex digits; `None`: derived from the tenant and `computer_dns_name` (stable).
    pub id: Option<String>,
    /// `computerDnsName`, used as given (Defender reports lower-case FQDNs).
    pub computer_dns_name: String,
    /// e.g. `Windows11`, `Windows10`, `WindowsServer2022`, `Linux`, `macOS`.
    pub os_platform: String,
    /// e.g. `23H2`.
    pub version: String,
    pub os_build: Option<i64>,
    /// `64-bit` or `32-bit`.
    pub os_architecture: String,
    /// Internal addresses; the first is `lastIpAddress`.
    pub ip_addresses: Vec<String>,
    pub external_ip: Option<String>,
    pub health: HealthStatus,
    pub onboarding: OnboardingStatus,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub risk_score: String,
    pub exposure_level: String,
    pub device_value: String,
    pub tags: Vec<String>,
    pub rbac_group_id: i64,
    pub rbac_group_name: Option<String>,
    pub aad_device_id: Option<String>,
    /// `None`: no antivirus health (the machine is absent from `deviceavinfo`).
    pub av: Option<AvSpec>,
    /// Earlier `(internal IP, time)` sightings for `findbyip`, beside `ip_addresses` at `last_seen`.
    pub ip_history: Vec<(String, Timestamp)>,
    pub is_potential_duplication: bool,
    pub merged_into_machine_id: Option<String>,
}

/// A stable pseudo-random byte from a name, for addresses that differ between machines.
fn byte_of(name: &str, i: usize) -> u8 {
    u8::from_str_radix(&hex_id(name, 64)[i * 2..i * 2 + 2], 16).unwrap_or(1)
}

impl MachineSpec {
    pub fn new(computer_dns_name: &str) -> Self {
        let now = Timestamp::now();
        let n = computer_dns_name.to_ascii_lowercase();
        MachineSpec {
            id: None,
            computer_dns_name: computer_dns_name.into(),
            os_platform: "Windows11".into(),
            version: "23H2".into(),
            os_build: Some(22631),
            os_architecture: "64-bit".into(),
            ip_addresses: vec![format!("10.{}.{}.{}", byte_of(&n, 0), byte_of(&n, 1), byte_of(&n, 2).max(1))],
            external_ip: Some(format!("203.0.113.{}", byte_of(&n, 3) % 250 + 1)),
            health: HealthStatus::Active,
            onboarding: OnboardingStatus::Onboarded,
            first_seen: now - SignedDuration::from_hours(24 * 90),
            last_seen: now - SignedDuration::from_mins(5),
            risk_score: "Low".into(),
            exposure_level: "Medium".into(),
            device_value: "Normal".into(),
            tags: Vec::new(),
            rbac_group_id: 0,
            rbac_group_name: None,
            aad_device_id: Some(uuid_from(&format!("aad:{n}"))),
            av: Some(AvSpec::default()),
            ip_history: Vec::new(),
            is_potential_duplication: false,
            merged_into_machine_id: None,
        }
    }

    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.into());
        self
    }

    pub fn os(mut self, platform: &str, version: &str, build: Option<i64>) -> Self {
        self.os_platform = platform.into();
        self.version = version.into();
        self.os_build = build;
        self
    }

    /// Internal addresses (the first becomes `lastIpAddress`).
    pub fn ips(mut self, ips: &[&str]) -> Self {
        self.ip_addresses = ips.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn external_ip(mut self, ip: Option<&str>) -> Self {
        self.external_ip = ip.map(str::to_owned);
        self
    }

    pub fn health(mut self, health: HealthStatus) -> Self {
        self.health = health;
        self
    }

    /// Any status but `Onboarded` also drops the antivirus health: only onboarded sensors report it.
    pub fn onboarding(mut self, onboarding: OnboardingStatus) -> Self {
        self.onboarding = onboarding;
        if onboarding != OnboardingStatus::Onboarded {
            self.av = None;
        }
        self
    }

    pub fn last_seen(mut self, at: Timestamp) -> Self {
        self.last_seen = at;
        self.first_seen = self.first_seen.min(at);
        self
    }

    pub fn first_seen(mut self, at: Timestamp) -> Self {
        self.first_seen = at;
        self
    }

    /// `deviceValue`: `Normal`, `Low` or `High`.
    pub fn device_value(mut self, value: &str) -> Self {
        self.device_value = value.into();
        self
    }

    pub fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn rbac_group(mut self, id: i64, name: &str) -> Self {
        self.rbac_group_id = id;
        self.rbac_group_name = Some(name.into());
        self
    }

    pub fn av(mut self, av: Option<AvSpec>) -> Self {
        self.av = av;
        self
    }

    /// An earlier sighting with this internal IP (found by `findbyip` within ±15 minutes of `at`).
    pub fn seen_with_ip(mut self, ip: &str, at: Timestamp) -> Self {
        self.ip_history.push((ip.into(), at));
        self
    }

    /// Marks the machine as a potential duplicate, optionally merged into another machine id.
    pub fn duplicate(mut self, merged_into: Option<&str>) -> Self {
        self.is_potential_duplication = true;
        self.merged_into_machine_id = merged_into.map(str::to_owned);
        self
    }

    /// The sensor version: Windows `10.<sense>.<build>.<revision>`, else the Linux/macOS style.
    fn agent_version(&self) -> String {
        match (os_kind(&self.os_platform), self.os_build) {
            ("windows", Some(build)) => format!("10.8760.{build}.{WINDOWS_UBR}"),
            _ => "101.24082.0004".into(),
        }
    }

    /// The id this spec gets in `tenant`.
    pub(crate) fn id_in(&self, tenant: &str) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| hex_id(&format!("machine:{tenant}:{}", self.computer_dns_name.to_ascii_lowercase()), 40))
    }

    /// The Machine entity.
    pub(crate) fn to_json(&self, id: &str) -> Value {
        let mac: String = (0..6).map(|i| format!("{:02X}", byte_of(&format!("mac:{id}"), i))).collect();
        let ip_addresses: Vec<Value> = self
            .ip_addresses
            .iter()
            .map(|ip| json!({"ipAddress": ip, "macAddress": mac, "type": "Ethernet", "operationalStatus": "Up"}))
            .collect();
        let av_status = match &self.av {
            Some(av) => av.defender_av_status(),
            None if self.onboarding == OnboardingStatus::Onboarded => "NotReporting",
            None => "Unknown",
        };
        json!({
            "id": id,
            "computerDnsName": self.computer_dns_name,
            "firstSeen": fmt_time(self.first_seen),
            "lastSeen": fmt_time(self.last_seen),
            "osPlatform": self.os_platform,
            "osProcessor": if self.os_architecture == "32-bit" { "x86" } else { "x64" },
            "version": self.version,
            "osBuild": self.os_build,
            "osArchitecture": self.os_architecture,
            "lastIpAddress": self.ip_addresses.first(),
            "lastExternalIpAddress": self.external_ip,
            "ipAddresses": ip_addresses,
            "healthStatus": self.health.as_str(),
            "onboardingStatus": self.onboarding.as_str(),
            "deviceValue": self.device_value,
            "rbacGroupId": self.rbac_group_id,
            "rbacGroupName": self.rbac_group_name,
            "riskScore": self.risk_score,
            "exposureLevel": self.exposure_level,
            "isAadJoined": self.aad_device_id.is_some(),
            "aadDeviceId": self.aad_device_id,
            "machineTags": self.tags,
            "agentVersion": (self.onboarding == OnboardingStatus::Onboarded).then(|| self.agent_version()),
            "defenderAvStatus": av_status,
            "isPotentialDuplication": self.is_potential_duplication,
            "mergedIntoMachineId": self.merged_into_machine_id,
        })
    }
}

/// The update build revision the emulator gives every Windows machine (`osVersion` 10.0.build.UBR).
const WINDOWS_UBR: u32 = 4317;

pub(crate) fn uuid_from(seed: &str) -> String {
    let h = hex_id(seed, 32);
    format!("{}-{}-4{}-8{}-{}", &h[..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

/// Times in `deviceavinfo` have whole seconds, as in its documented sample.
fn fmt_secs(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn up_to_date(flag: Option<bool>) -> &'static str {
    match flag {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    }
}

/// `osKind` of deviceavinfo from the Machine entity's `osPlatform`.
fn os_kind(platform: &str) -> &'static str {
    let p = platform.to_ascii_lowercase();
    if p.starts_with("windows") {
        "windows"
    } else if p.starts_with("mac") || p.starts_with("ios") {
        "mac"
    } else {
        "linux"
    }
}

/// One `deviceavinfo` row from the current Machine entity and its antivirus health.
pub(crate) fn av_row(machine: &Value, av: &AvSpec, refreshed: Timestamp) -> Value {
    let text = |k: &str| machine[k].as_str().unwrap_or_default().to_owned();
    let platform = text("osPlatform");
    let os_version = match (os_kind(&platform), machine["osBuild"].as_i64()) {
        ("windows", Some(build)) => format!("10.0.{build}.{WINDOWS_UBR}"),
        _ => text("version"),
    };
    let last_seen = text("lastSeen").parse::<Timestamp>().map(fmt_secs).ok();
    let scanned = av.signature_updated + SignedDuration::from_mins(20);
    json!({
        "id": machine["id"],
        "machineId": machine["id"],
        // The documented sample shows the short computer name here.
        "computerDnsName": text("computerDnsName").split('.').next().unwrap_or_default(),
        "osKind": os_kind(&platform),
        "osPlatform": platform,
        "osVersion": os_version,
        "avMode": av.mode.code(),
        "avSignatureVersion": av.signature_version,
        "avEngineVersion": av.engine_version,
        "avPlatformVersion": av.platform_version,
        "lastSeenTime": last_seen,
        "quickScanResult": "Completed",
        "quickScanError": "",
        "quickScanTime": fmt_secs(scanned),
        "fullScanResult": "",
        "fullScanError": "",
        "fullScanTime": null,
        "dataRefreshTimestamp": fmt_secs(refreshed),
        "avEngineUpdateTime": fmt_secs(av.signature_updated),
        "avSignatureUpdateTime": fmt_secs(av.signature_updated),
        "avPlatformUpdateTime": fmt_secs(av.platform_updated),
        "avIsSignatureUpToDate": up_to_date(av.signature_up_to_date),
        "avIsEngineUpToDate": up_to_date(av.engine_up_to_date),
        "avIsPlatformUpToDate": up_to_date(av.platform_up_to_date),
        "avSignaturePublishTime": fmt_secs(av.signature_updated - SignedDuration::from_hours(2)),
        "rbacGroupName": machine["rbacGroupName"],
        "rbacGroupId": machine["rbacGroupId"],
    })
}

/// Host names of the machines every provisioned tenant starts with (FQDNs in the tenant's first
/// domain), and what each shows.
pub mod sandbox_machines {
    /// Ready, with the id the emulator has always given it (the default alert is on it).
    pub const WIN11_01: &str = "sandbox-win11-01";
    /// Ready.
    pub const WIN11_02: &str = "sandbox-win11-02";
    /// Ready: the laptop of the example findings.
    pub const LAPTOP_7: &str = "laptop-7";
    /// Ready: Windows Server 2022, the server of the example findings.
    pub const SERVER_2: &str = "server-2";
    /// Onboarded and active, but Defender Antivirus is in passive mode (another AV is primary).
    pub const PASSIVE_AV: &str = "laptop-9";
    /// Onboarded, but `Inactive`: last seen 45 days ago.
    pub const INACTIVE: &str = "laptop-old-4";
    /// Discovered on the network, not onboarded (`CanBeOnboarded`, no antivirus health).
    pub const NOT_ONBOARDED: &str = "kiosk-6";
    /// Onboarded and active, antimalware platform 4.18.1807 (older than the 4.18.1901 that file
    /// indicators need), reported out of date.
    pub const OUTDATED_PLATFORM: &str = "desktop-8";
}

/// The machines every provisioned tenant starts with, `(id, spec)`; see [`sandbox_machines`].
pub(crate) fn default_machines(tenant: &str, domain: &str, now: Timestamp) -> Vec<(String, MachineSpec)> {
    use sandbox_machines::*;
    let fqdn = |name: &str| format!("{name}.{domain}");
    let ago = |mins: i64| now - SignedDuration::from_mins(mins);
    let ready = |name: &str| MachineSpec::new(&fqdn(name)).last_seen(ago(5));
    let mut specs = Vec::new();
    for i in 1..=2 {
        let name = if i == 1 { WIN11_01 } else { WIN11_02 };
        let spec =
            ready(name).ips(&[&format!("10.0.0.{}", 10 + i)]).external_ip(Some(&format!("203.0.113.{}", 10 + i)));
        specs.push((hex_id(&format!("machine:{tenant}:{i}"), 40), spec.tags(&["sandbox"]).last_seen(ago(5 * i))));
    }
    let others = [
        ready(LAPTOP_7).ips(&["10.0.1.7", "fe80::7"]),
        ready(SERVER_2).os("WindowsServer2022", "21H2", Some(20348)).ips(&["10.0.2.2"]).device_value("High"),
        ready(PASSIVE_AV).os("Windows10", "22H2", Some(19045)).av(Some(AvSpec::default().mode(AvMode::Passive))),
        ready(INACTIVE).health(HealthStatus::Inactive).last_seen(ago(45 * 24 * 60)).av(Some(AvSpec {
            signature_up_to_date: Some(false),
            engine_up_to_date: Some(false),
            platform_updated: ago(60 * 24 * 60),
            signature_updated: ago(45 * 24 * 60),
            ..AvSpec::default()
        })),
        ready(NOT_ONBOARDED).onboarding(OnboardingStatus::CanBeOnboarded).health(HealthStatus::NoSensorData),
        ready(OUTDATED_PLATFORM)
            .os("Windows10", "1809", Some(17763))
            .av(Some(AvSpec::default().platform("4.18.1807.18075", Some(false)))),
    ];
    specs.extend(others.into_iter().map(|s| (s.id_in(tenant), s)));
    specs
}
