//! The Python tools some tests drive: the real Helm library (`helm-sdkpy`, Helm v4's Go library),
//! Google's CEL (`cel-expr-python`, cel-cpp) and `checkov`. `.ci/run` installs them into a
//! virtualenv and names its interpreter in `DEFENDER_PYTHON`.
//!
//! In CI (`CI` or `DEFENDER_PYTHON` set) a missing tool fails the test that needs it. Elsewhere
//! the test says what to install and returns without checking anything.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What `.ci/run` installs (and so what a developer installs to run these tests).
pub const INSTALL_HINT: &str = "python3 -m venv target/python && \
    target/python/bin/pip install -r .ci/requirements.txt -c .ci/constraints.txt && \
    target/python/bin/pip install --ignore-requires-python -r .ci/requirements-helm.txt -c .ci/constraints.txt, \
    then run the tests with DEFENDER_PYTHON=target/python/bin/python (README: Development)";

/// A Python interpreter with the modules a test needs.
#[derive(Clone, Debug)]
pub struct Python {
    pub exe: PathBuf,
}

/// Whether a missing tool fails the test (CI) rather than skipping it.
pub fn required() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
        || std::env::var_os("DEFENDER_PYTHON").is_some()
}

impl Python {
    /// The interpreter (`$DEFENDER_PYTHON`, else `python3`) if it imports every module; else
    /// None after saying what is missing — or a panic in CI.
    pub fn with(modules: &[&str]) -> Option<Python> {
        // Absolute, so that it still names the same file where a test runs it in another directory.
        let exe = std::env::var_os("DEFENDER_PYTHON")
            .map(|p| std::path::absolute(p).expect("DEFENDER_PYTHON names a path"))
            .unwrap_or_else(|| "python3".into());
        let imports = modules.iter().map(|m| format!("import {m}")).collect::<Vec<_>>().join("; ");
        let output = std::process::Command::new(&exe).args(["-c", &imports]).output();
        let problem = match output {
            Ok(o) if o.status.success() => return Some(Python { exe }),
            Ok(o) => String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or_default().to_string(),
            Err(e) => format!("{}: {e}", exe.display()),
        };
        let message = format!("needs the Python modules {modules:?} ({problem}): {INSTALL_HINT}");
        if required() {
            panic!("{message}");
        }
        eprintln!("SKIPPED (not in CI): this test {message}");
        None
    }

    /// Runs `tests/helm/<script>` with `args`, `stdin` piped in; returns (exit code, stdout, stderr).
    pub async fn run(&self, script: &str, args: &[String], stdin: Option<&str>) -> (i32, String, String) {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(&self.exe)
            .arg(Path::new(ROOT).join("tests/helm").join(script))
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs: {e}", self.exe.display()));
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin piped");
            pipe.write_all(input.as_bytes()).await.expect("stdin written");
            drop(pipe);
        }
        let output = child.wait_with_output().await.expect("the script finishes");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into(),
            String::from_utf8_lossy(&output.stderr).into(),
        )
    }

    /// The `checkov` that was installed beside this interpreter (a virtualenv's `bin/`), else the
    /// one on PATH.
    pub fn checkov(&self) -> PathBuf {
        let beside = self.exe.parent().map(|d| d.join("checkov"));
        beside.filter(|p| p.exists()).unwrap_or_else(|| "checkov".into())
    }
}

/// A Helm release as `tests/helm/helm.py` summarises it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Release {
    pub name: String,
    pub namespace: String,
    pub version: i64,
    pub status: String,
    pub description: Option<String>,
    pub notes: Option<String>,
    pub manifest: String,
    pub config: Value,
    pub chart_version: Option<String>,
    pub app_version: Option<String>,
}

impl Release {
    /// The rendered objects of the release (its manifest), as JSON.
    pub fn objects(&self) -> Vec<Value> {
        yaml_objects(&self.manifest)
    }
}

/// Every object of a multi-document YAML stream.
pub fn yaml_objects(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The chart in this repository.
pub fn chart_dir() -> String {
    format!("{ROOT}/deploy/helm/defender-operator")
}

/// Helm, through the real library, against one cluster (a kubeconfig) and namespace.
#[derive(Clone, Debug)]
pub struct Helm {
    pub python: Python,
    pub kubeconfig: PathBuf,
    pub namespace: String,
}

impl Helm {
    /// Helm for the cluster in `kubeconfig`, or None (skipped) when the library is missing
    /// outside CI.
    pub fn new(kubeconfig: &Path, namespace: &str) -> Option<Helm> {
        let python = Python::with(&["helm_sdkpy"])?;
        Some(Helm { python, kubeconfig: kubeconfig.to_path_buf(), namespace: namespace.to_string() })
    }

    /// Runs one action; Err is Helm's refusal (its message), a crash of the script panics.
    pub async fn call(&self, action: &str, extra: &[String]) -> Result<Value, String> {
        let mut args = vec![
            action.to_string(),
            "--kubeconfig".into(),
            self.kubeconfig.display().to_string(),
            "--namespace".into(),
            self.namespace.clone(),
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = self.python.run("helm.py", &args, None).await;
        let answer: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|_| panic!("helm.py {action} failed (exit {code}):\n{out}\n{err}"));
        if answer["ok"] == true {
            Ok(answer["result"].clone())
        } else {
            Err(answer["error"].as_str().unwrap_or_default().into())
        }
    }

    fn release_args(release: &str, values: &Value, wait: u64) -> Vec<String> {
        vec![
            "--release".into(),
            release.into(),
            "--chart".into(),
            chart_dir(),
            "--values".into(),
            values.to_string(),
            "--wait".into(),
            wait.to_string(),
        ]
    }

    /// `helm install RELEASE deploy/helm/defender-operator --create-namespace -f values`;
    /// `wait` seconds for readiness (0: none, as on the sandbox, where no pod runs).
    pub async fn install(&self, release: &str, values: &Value, wait: u64) -> Result<Release, String> {
        let mut args = Self::release_args(release, values, wait);
        args.push("--create-namespace".into());
        self.call("install", &args).await.map(|v| serde_json::from_value(v).expect("a release"))
    }

    /// `helm install` with server-side apply (Helm 4's `--server-side`), then `helm upgrade`
    /// likewise: the release's objects applied by the API server's field managers.
    pub async fn install_server_side(&self, release: &str, values: &Value) -> Result<Release, String> {
        let mut args = Self::release_args(release, values, 0);
        args.extend(["--create-namespace".into(), "--server-side".into()]);
        self.call("install", &args).await.map(|v| serde_json::from_value(v).expect("a release"))
    }

    pub async fn upgrade_server_side(&self, release: &str, values: &Value) -> Result<Release, String> {
        let mut args = Self::release_args(release, values, 0);
        args.extend(["--reset-values".into(), "--server-side".into()]);
        self.call("upgrade", &args).await.map(|v| serde_json::from_value(v).expect("a release"))
    }

    /// `helm upgrade RELEASE deploy/helm/defender-operator --reset-values -f values`.
    pub async fn upgrade(&self, release: &str, values: &Value, wait: u64) -> Result<Release, String> {
        let mut args = Self::release_args(release, values, wait);
        args.push("--reset-values".into());
        self.call("upgrade", &args).await.map(|v| serde_json::from_value(v).expect("a release"))
    }

    pub async fn rollback(&self, release: &str, revision: i64) -> Result<Value, String> {
        self.call("rollback", &["--release".into(), release.into(), "--revision".into(), revision.to_string()]).await
    }

    pub async fn uninstall(&self, release: &str, wait: u64) -> Result<Value, String> {
        self.call("uninstall", &["--release".into(), release.into(), "--wait".into(), wait.to_string()]).await
    }

    pub async fn history(&self, release: &str) -> Vec<Release> {
        let history = self.call("history", &["--release".into(), release.into()]).await.expect("helm history");
        serde_json::from_value(history).expect("releases")
    }

    pub async fn list(&self) -> Vec<Release> {
        serde_json::from_value(self.call("list", &[]).await.expect("helm list")).expect("releases")
    }

    pub async fn lint(&self) -> Value {
        self.call("lint", &["--chart".into(), chart_dir()]).await.expect("helm lint runs")
    }
}
