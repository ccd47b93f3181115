//! `partner attach|detach|list`: Prelude's partner verbs, the Kubernetes way. `attach` writes a
//! Secret and a `DefenderPartner` by server-side apply and waits for the operator's verdict.

use std::io::BufRead;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::api::{Cloud, DefenderPartner, PartnerState};
use crate::controller::credentials;
use crate::defender::assertion::CertificateKey;

const MANAGER: &str = "defender-operator-cli";
const SECRET_ENV: &str = "DEFENDER_CLIENT_SECRET";

#[derive(Subcommand, Debug)]
pub enum PartnerCommand {
    /// Attach a partner: `partner attach defender --user TENANT_ID --secret APP_ID/APP_SECRET`, or
    /// `--certificate FILE --private-key FILE --client-id APP_ID`, or `--service-account NAME`.
    Attach(AttachArgs),
    /// Detach a partner: delete it (or only suspend it).
    Detach(DetachArgs),
    /// List partners and their states.
    List(ListArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PartnerKind {
    Defender,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("proof").required(true).args(["secret", "certificate", "service_account"]))]
pub struct AttachArgs {
    pub kind: PartnerKind,
    /// The Entra tenant id (GUID or verified domain).
    #[arg(long)]
    pub user: String,
    /// `APP_ID/APP_SECRET`; or just `APP_ID`, with the secret in $DEFENDER_CLIENT_SECRET or on
    /// standard input, which keeps it out of shell history.
    #[arg(long)]
    pub secret: Option<String>,
    /// A PEM certificate uploaded to the app (with `--private-key` and `--client-id`): written to a
    /// `kubernetes.io/tls` Secret; the operator signs client assertions with its key.
    #[arg(long, requires_all = ["private_key", "client_id"], value_name = "FILE")]
    pub certificate: Option<std::path::PathBuf>,
    /// The certificate's PEM RSA private key (PKCS#1 or PKCS#8).
    #[arg(long, requires = "certificate", value_name = "FILE")]
    pub private_key: Option<std::path::PathBuf>,
    /// Workload identity: a ServiceAccount of the namespace whose tokens the app trusts through a
    /// federated credential. No secret is stored.
    #[arg(long, value_name = "NAME")]
    pub service_account: Option<String>,
    /// The app's client id, with `--certificate` or `--service-account` (for the latter, default:
    /// the ServiceAccount's `azure.workload.identity/client-id` annotation).
    #[arg(long, value_name = "APP_ID")]
    pub client_id: Option<String>,
    /// Defender API host or URL (default: the cloud's).
    #[arg(long)]
    pub api: Option<String>,
    #[arg(long, default_value = "defender")]
    pub name: String,
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The sovereign cloud; the CRD's spellings (`GCCHigh`, …) are accepted too.
    #[arg(long, value_enum, default_value = "commercial")]
    pub cloud: CloudArg,
    /// How long to wait for the operator's verdict.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Replace a partner or Secret of that name that `attach` did not write (kubectl, GitOps).
    #[arg(long)]
    pub overwrite: bool,
}

/// `--cloud`: the CLI's kebab-case names, with the CRD's spellings (`spec.cloud`) as aliases.
/// What is written is always the CRD's spelling (the serialized [`Cloud`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CloudArg {
    #[value(alias = "Commercial")]
    Commercial,
    #[value(alias = "GCC")]
    Gcc,
    #[value(alias = "GCCHigh")]
    GccHigh,
    #[value(alias = "DoD")]
    Dod,
}

impl From<CloudArg> for Cloud {
    fn from(cloud: CloudArg) -> Self {
        match cloud {
            CloudArg::Commercial => Cloud::Commercial,
            CloudArg::Gcc => Cloud::Gcc,
            CloudArg::GccHigh => Cloud::GccHigh,
            CloudArg::Dod => Cloud::DoD,
        }
    }
}

#[derive(Args, Debug)]
pub struct DetachArgs {
    pub kind: PartnerKind,
    #[arg(long, default_value = "defender")]
    pub name: String,
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Suspend instead of deleting: nothing is pushed or withdrawn until resumed.
    #[arg(long)]
    pub suspend: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::api::duration::parse(text).map_err(|e| e.to_string())
}

pub async fn run(command: PartnerCommand) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("no Kubernetes cluster: set KUBECONFIG")?;
    let default_namespace = client.default_namespace().to_string();
    match command {
        PartnerCommand::Attach(args) => {
            let namespace = args.namespace.clone().unwrap_or(default_namespace);
            attach(client, &namespace, args).await
        }
        PartnerCommand::Detach(args) => {
            let namespace = args.namespace.clone().unwrap_or(default_namespace);
            detach(client, &namespace, args).await
        }
        PartnerCommand::List(args) => {
            let api: Api<DefenderPartner> = match (args.all_namespaces, args.namespace) {
                (true, _) => Api::all(client),
                (false, namespace) => Api::namespaced(client, &namespace.unwrap_or(default_namespace)),
            };
            print!("{}", table(&api.list(&ListParams::default()).await?.items));
            Ok(())
        }
    }
}

/// `APP_ID/APP_SECRET`, or `APP_ID` with the secret from the environment or standard input.
fn split_secret(value: &str) -> anyhow::Result<(String, String)> {
    if let Some((app, secret)) = value.split_once('/') {
        return Ok((app.trim().to_string(), secret.trim().to_string()));
    }
    let secret = match std::env::var(SECRET_ENV) {
        Ok(secret) => secret,
        Err(_) => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("reading the client secret from standard input")?;
            line
        }
    };
    let secret = secret.trim().to_string();
    if secret.is_empty() {
        bail!("--secret gives no client secret: use APP_ID/APP_SECRET, or set {SECRET_ENV}, or pipe it on stdin");
    }
    Ok((value.trim().to_string(), secret))
}

/// A bare host becomes an https URL.
fn api_url(api: &str) -> String {
    if api.contains("://") {
        api.trim_end_matches('/').to_string()
    } else {
        format!("https://{}", api.trim_end_matches('/'))
    }
}

async fn attach(client: Client, namespace: &str, args: AttachArgs) -> anyhow::Result<()> {
    let tenant_id = args.user.trim().to_string();
    let params = PatchParams::apply(MANAGER).force();
    let secret_name = format!("{}-credentials", args.name);
    let existing = refuse_foreign(&client, namespace, &args, &secret_name).await?;
    // What the partner's credentials look like, and the hash the operator will report for them.
    let (credentials, secret, expected_hash) = if let Some(account) = &args.service_account {
        let client_id = match &args.client_id {
            Some(client_id) => client_id.trim().to_string(),
            None => annotated_client_id(&client, namespace, account).await?,
        };
        let reference: crate::api::partner::ServiceAccountRef =
            serde_json::from_value(json!({"name": account})).context("--service-account")?;
        let hash = credentials::federated_hash(&tenant_id, &client_id, namespace, &reference);
        let credentials = json!({"type": "WorkloadIdentity", "tenantId": tenant_id, "clientId": client_id,
            "serviceAccountRef": {"name": account}});
        (credentials, None, Some(hash))
    } else if let (Some(certificate), Some(key), Some(client_id)) =
        (&args.certificate, &args.private_key, &args.client_id)
    {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        let (certificate, key) = (read(certificate)?, read(key)?);
        let client_id = client_id.trim();
        // Refused here, before anything is written: the operator would say the same.
        CertificateKey::from_pem(certificate.as_bytes(), key.as_bytes()).context("--certificate/--private-key")?;
        let secret = json!({"type": "kubernetes.io/tls", "stringData": {"tls.crt": certificate, "tls.key": key}});
        let hash = credentials::certificate_hash(&tenant_id, client_id, &certificate, &key);
        let credentials = json!({"type": "Certificate", "tenantId": tenant_id, "clientId": client_id, "secretRef": {"name": secret_name}});
        (credentials, Some(secret), Some(hash))
    } else {
        let (client_id, client_secret) = split_secret(args.secret.as_deref().unwrap_or_default())?;
        let hash = credentials::client_secret_hash(&tenant_id, &client_id, &client_secret);
        let secret = json!({"type": "Opaque",
            "stringData": {"tenantId": tenant_id, "clientId": client_id, "clientSecret": client_secret}});
        (json!({"secretRef": {"name": secret_name}}), Some(secret), Some(hash))
    };
    if let Some(mut secret) = secret {
        secret["apiVersion"] = json!("v1");
        secret["kind"] = json!("Secret");
        secret["metadata"] = json!({"name": secret_name, "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGER}});
        Api::<Secret>::namespaced(client.clone(), namespace)
            .patch(&secret_name, &params, &Patch::Apply(&secret))
            .await
            .with_context(|| format!("writing Secret {namespace}/{secret_name}"))?;
        eprintln!("applied Secret {secret_name}");
    }
    let partner = partner_object(&args, namespace, credentials);
    let partners: Api<DefenderPartner> = Api::namespaced(client, namespace);
    if let Some(mut existing) = existing.filter(|p| !written_by_attach(&p.metadata)) {
        // --overwrite: the spec becomes attach's alone (fields other managers set go), the
        // metadata (finalizers, other labels) stays; the apply below then owns it.
        existing.spec = serde_json::from_value(partner["spec"].clone()).context("the partner attach writes")?;
        existing.metadata.managed_fields = None;
        let params = kube::api::PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        partners
            .replace(&args.name, &params, &existing)
            .await
            .with_context(|| format!("replacing DefenderPartner {namespace}/{}", args.name))?;
    }
    partners
        .patch(&args.name, &params, &Patch::Apply(&partner))
        .await
        .with_context(|| format!("writing DefenderPartner {namespace}/{}", args.name))?;
    eprintln!("applied DefenderPartner {}; waiting for the operator's verdict…", args.name);

    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        let partner = partners.get(&args.name).await?;
        if let Some(status) = partner.status.as_ref()
            && status.observed_generation == partner.metadata.generation
            && status.credentials_hash == expected_hash
            && let Some(state) = status.state
        {
            let reason = status.reason.clone().unwrap_or_default();
            let message = status.message.clone().unwrap_or_default();
            return match state {
                PartnerState::Attached => {
                    println!("Attached (tenant {})", status.tenant_id.as_deref().unwrap_or("?"));
                    Ok(())
                }
                PartnerState::Detached => bail!("Detached: {reason}: {message}"),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no verdict within {:?}: is the operator running? (kubectl describe dp {})", args.timeout, args.name);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The app's client id from the ServiceAccount's azure-workload-identity annotation, read with the
/// user's rights (the operator's own RBAC does not read ServiceAccounts), and written into the
/// partner's spec.
async fn annotated_client_id(client: &Client, namespace: &str, account: &str) -> anyhow::Result<String> {
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let found = accounts
        .get_opt(account)
        .await
        .with_context(|| format!("reading ServiceAccount {namespace}/{account}"))?
        .with_context(|| format!("ServiceAccount {namespace}/{account} not found: create it first"))?;
    found
        .annotations()
        .get("azure.workload.identity/client-id")
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
        .with_context(|| {
            format!("give --client-id, or annotate ServiceAccount {namespace}/{account} with azure.workload.identity/client-id")
        })
}

/// `attach` replaces only what it wrote (its label `app.kubernetes.io/managed-by`): a partner or
/// Secret of that name written otherwise (kubectl, a GitOps tool) is refused unless
/// `--overwrite`. Returns the partner when it exists.
async fn refuse_foreign(
    client: &Client,
    namespace: &str,
    args: &AttachArgs,
    secret_name: &str,
) -> anyhow::Result<Option<DefenderPartner>> {
    let name = &args.name;
    let partners: Api<DefenderPartner> = Api::namespaced(client.clone(), namespace);
    let partner = partners.get_opt(name).await.with_context(|| format!("reading DefenderPartner {name}"))?;
    if !args.overwrite
        && let Some(partner) = &partner
        && !written_by_attach(&partner.metadata)
    {
        bail!(
            "DefenderPartner {namespace}/{name} exists and was not written by `partner attach`{}: pass --overwrite \
             to replace its spec, or --name for another partner",
            spec_managers(&partner.metadata)
        );
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if !args.overwrite
        && let Some(secret) =
            secrets.get_opt(secret_name).await.with_context(|| format!("reading Secret {secret_name}"))?
        && !written_by_attach(&secret.metadata)
    {
        bail!(
            "Secret {namespace}/{secret_name} exists and was not written by `partner attach`: pass --overwrite to \
             replace it, or --name for another partner"
        );
    }
    Ok(partner)
}

fn written_by_attach(meta: &kube::core::ObjectMeta) -> bool {
    meta.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/managed-by")).map(String::as_str) == Some(MANAGER)
}

/// ` (its spec is managed by kubectl, argocd-controller)`: who wrote the spec, if anyone did.
fn spec_managers(meta: &kube::core::ObjectMeta) -> String {
    let managers: Vec<String> = meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| e.subresource.as_deref().unwrap_or_default().is_empty())
        .filter(|e| e.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").is_some()))
        .filter_map(|e| e.manager.clone())
        .collect();
    if managers.is_empty() { String::new() } else { format!(" (its spec is managed by {})", managers.join(", ")) }
}

/// The `DefenderPartner` that `attach` applies.
fn partner_object(args: &AttachArgs, namespace: &str, credentials: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"cloud": Cloud::from(args.cloud), "credentials": credentials, "suspend": false});
    if let Some(api) = &args.api {
        spec["api"] = json!(api_url(api));
    }
    json!({"apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner",
        "metadata": {"name": args.name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": MANAGER}},
        "spec": spec})
}

async fn detach(client: Client, namespace: &str, args: DetachArgs) -> anyhow::Result<()> {
    let partners: Api<DefenderPartner> = Api::namespaced(client.clone(), namespace);
    if args.suspend {
        // A merge patch: applying only `suspend` as the manager that applied the rest would
        // drop the rest.
        let patch = json!({"spec": {"suspend": true}});
        partners.patch(&args.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        println!("Suspended {namespace}/{}", args.name);
        return Ok(());
    }
    let secret_name = partners
        .get(&args.name)
        .await
        .with_context(|| format!("reading {}", args.name))?
        .spec
        .credentials
        .secret_ref
        .map(|reference| reference.name);
    partners.delete(&args.name, &DeleteParams::default()).await.with_context(|| format!("deleting {}", args.name))?;
    // The operator's finalizer withdraws indicators first (deletionPolicy: Delete).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while partners.get_opt(&args.name).await?.is_some() {
        if tokio::time::Instant::now() >= deadline {
            bail!("{} is still being deleted: see kubectl describe dp {}", args.name, args.name);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("Detached {namespace}/{}", args.name);
    // The client secret goes with the partner when `attach` wrote it and no other partner uses it.
    let Some(secret_name) = secret_name else { return Ok(()) };
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let written_by_attach = secrets
        .get_opt(&secret_name)
        .await?
        .is_some_and(|secret| secret.labels().get("app.kubernetes.io/managed-by").map(String::as_str) == Some(MANAGER));
    let still_used = partners
        .list(&Default::default())
        .await?
        .items
        .iter()
        .any(|p| p.spec.credentials.secret_ref.as_ref().is_some_and(|r| r.name == secret_name));
    if written_by_attach && !still_used {
        secrets
            .delete(&secret_name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting Secret {secret_name}"))?;
        println!("Deleted Secret {namespace}/{secret_name} (written by attach)");
    }
    Ok(())
}

fn table(partners: &[DefenderPartner]) -> String {
    let mut rows = vec![["NAMESPACE", "NAME", "STATE", "TENANT", "INDICATORS", "REASON"].map(String::from)];
    for partner in partners {
        let status = partner.status.clone().unwrap_or_default();
        rows.push([
            partner.metadata.namespace.clone().unwrap_or_default(),
            partner.metadata.name.clone().unwrap_or_default(),
            status.state.map(|s| format!("{s:?}")).unwrap_or_default(),
            status.tenant_id.unwrap_or_default(),
            status.indicators.map(|i| i.submitted.to_string()).unwrap_or_default(),
            status.reason.unwrap_or_default(),
        ]);
    }
    columns(&rows)
}

/// Rows as aligned columns, as kubectl prints them: each column as wide as its widest cell
/// (in characters), three spaces apart, the last one unpadded.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line += cell;
            if i + 1 < N {
                line += &" ".repeat(widths[i] - cell.chars().count() + 3);
            }
        }
        text += line.trim_end();
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every column starts at the same character in every line, however long a name is.
    #[test]
    fn the_list_stays_aligned_with_long_names() {
        let partner = |ns: &str, name: &str, reason: &str| {
            let mut p: DefenderPartner = serde_json::from_value(json!({
                "apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"credentials": {"secretRef": {"name": "s"}}},
            }))
            .unwrap();
            p.status = Some(crate::api::DefenderPartnerStatus {
                state: Some(PartnerState::Detached),
                reason: Some(reason.into()),
                ..Default::default()
            });
            p
        };
        let text = table(&[
            partner("team-with-a-rather-long-namespace-name", "defender", "InvalidSecret"),
            partner("a", "a-partner-whose-name-is-longer-than-twenty-characters", "SecretNotFound"),
            partner("ü-ns", "ünïcode", "Suspended"),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let starts = |line: &str| -> Vec<usize> {
            let chars: Vec<char> = line.chars().collect();
            (0..chars.len()).filter(|&i| chars[i] != ' ' && (i == 0 || chars[i - 1] == ' ')).collect()
        };
        let header = starts(lines[0]);
        assert_eq!(header.len(), 6, "{text}");
        for line in &lines[1..] {
            // Empty cells (TENANT, INDICATORS) leave gaps: every word starts at a column.
            for start in starts(line) {
                assert!(header.contains(&start), "misaligned at {start}:\n{text}");
            }
            let reason_at = header[5];
            let reason: String = line.chars().skip(reason_at).collect();
            assert!(["InvalidSecret", "SecretNotFound", "Suspended"].contains(&reason.as_str()), "{text}");
        }
    }

    #[test]
    fn secret_and_api_forms() {
        assert_eq!(split_secret("app/s3cr3t").unwrap(), ("app".to_string(), "s3cr3t".to_string()));
        assert_eq!(api_url("api-eu.securitycenter.microsoft.com"), "https://api-eu.securitycenter.microsoft.com");
        assert_eq!(api_url("http://127.0.0.1:8080/"), "http://127.0.0.1:8080");
    }

    fn attach_args(cloud: Option<&str>) -> AttachArgs {
        let mut argv = vec!["defender-operator", "partner", "attach", "defender", "--user", "t", "--secret", "a/b"];
        argv.extend(cloud.iter().flat_map(|c| ["--cloud", *c]));
        match <crate::cli::Cli as clap::Parser>::try_parse_from(argv) {
            Ok(crate::cli::Cli { command: crate::cli::Command::Partner(PartnerCommand::Attach(args)) }) => args,
            other => panic!("--cloud {cloud:?}: {other:?}"),
        }
    }

    /// Every `--cloud` spelling, the CLI's and the CRD's, writes the CRD's spelling, which the
    /// CRD's enum takes (`--cloud gcc-high` once wrote `gcc-high`, which the API server refused).
    #[test]
    fn cloud_is_written_in_the_crds_spelling() {
        let crd = serde_json::to_value(<DefenderPartner as kube::CustomResourceExt>::crd()).unwrap();
        let at = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/cloud/enum";
        let allowed = crd.pointer(at).and_then(serde_json::Value::as_array).expect("spec.cloud is an enum").clone();
        let cases = [
            ("commercial", "Commercial"),
            ("Commercial", "Commercial"),
            ("gcc", "GCC"),
            ("GCC", "GCC"),
            ("gcc-high", "GCCHigh"),
            ("GCCHigh", "GCCHigh"),
            ("dod", "DoD"),
            ("DoD", "DoD"),
        ];
        for (given, written) in cases {
            let partner =
                partner_object(&attach_args(Some(given)), "ns", json!({"secretRef": {"name": "defender-credentials"}}));
            assert_eq!(partner["spec"]["cloud"], written, "--cloud {given}");
            assert!(allowed.contains(&partner["spec"]["cloud"]), "--cloud {given}: {written} is not in {allowed:?}");
        }
        assert_eq!(partner_object(&attach_args(None), "ns", json!({}))["spec"]["cloud"], "Commercial", "the default");
        // Every accepted spelling is covered above, and every CRD value can be written.
        let spellings: Vec<String> = CloudArg::value_variants()
            .iter()
            .flat_map(|v| v.to_possible_value().unwrap().get_name_and_aliases().map(String::from).collect::<Vec<_>>())
            .collect();
        let mut covered: Vec<&str> = cases.iter().map(|(given, _)| *given).collect();
        let mut spellings: Vec<&str> = spellings.iter().map(String::as_str).collect();
        covered.sort_unstable();
        spellings.sort_unstable();
        assert_eq!(spellings, covered);
        let mut written: Vec<&str> = cases.iter().map(|(_, w)| *w).collect();
        written.dedup();
        assert_eq!(allowed.len(), written.len(), "{allowed:?}");
        let argv = ["defender-operator", "partner", "attach", "defender", "--user", "t", "--secret", "a/b", "--cloud"];
        let unknown = <crate::cli::Cli as clap::Parser>::try_parse_from(argv.iter().chain(&["China"]));
        assert!(
            unknown.is_err_and(|e| e.to_string().contains("gcc-high")),
            "an unknown cloud is refused, listing the names"
        );
    }
}
