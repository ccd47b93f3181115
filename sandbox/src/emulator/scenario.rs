//! Hooks that shape a tenant's machines, antivirus health and alerts, for tests and the demo.
//! Tenants are given by GUID or domain; machines by id or computer name.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::Emulator;
use super::alerts::TestRun;
use super::machines::{AvSpec, MachineSpec};
use super::store::fmt_time;

impl Emulator {
    /// Adds a machine, or replaces the one with the same id (by default the id derives from the
    /// tenant and the computer name, so putting the same name again replaces it). Its IPs at its
    /// `lastSeen`, and earlier sightings, become findable with `findbyip`. Returns the id.
    pub fn put_machine(&self, tenant_id: &str, spec: MachineSpec) -> String {
        let tenant = self.shared.tenant_id(tenant_id);
        self.shared.machines.lock().unwrap().put(&tenant, spec, Timestamp::now())
    }

    /// Edits a machine's entity as the API returns it, e.g.
    /// `|m| m["healthStatus"] = json!("Inactive")`. False when there is no such machine.
    pub fn update_machine(&self, tenant_id: &str, machine: &str, edit: impl FnOnce(&mut Value)) -> bool {
        let tenant = self.shared.tenant_id(tenant_id);
        self.shared.machines.lock().unwrap().update(&tenant, machine, Timestamp::now(), edit)
    }

    /// Removes a machine. False when there was none.
    pub fn remove_machine(&self, tenant_id: &str, machine: &str) -> bool {
        let tenant = self.shared.tenant_id(tenant_id);
        self.shared.machines.lock().unwrap().remove(&tenant, machine)
    }

    /// Sets a machine's antivirus health (`None`: it reports none and leaves `deviceavinfo`).
    /// False when there is no such machine.
    pub fn set_av_info(&self, tenant_id: &str, machine: &str, av: Option<AvSpec>) -> bool {
        let tenant = self.shared.tenant_id(tenant_id);
        self.shared.machines.lock().unwrap().set_av(&tenant, machine, av, Timestamp::now())
    }

    /// The tenant's machines, as `GET /api/machines` returns them.
    pub fn machines(&self, tenant_id: &str) -> Vec<Value> {
        let tenant = self.shared.tenant_id(tenant_id);
        self.shared.machines.lock().unwrap().entities(&tenant)
    }

    /// The id of a machine given by id or computer name (full or first label).
    pub fn machine_id(&self, tenant_id: &str, machine: &str) -> Option<String> {
        let tenant = self.shared.tenant_id(tenant_id);
        self.shared.machines.lock().unwrap().id_of(&tenant, machine)
    }

    /// A machine runs a test binary: unless the outcome is `NotDetected`, an alert with the
    /// file as evidence appears `run.delay` from now (its `alertCreationTime` and
    /// `lastUpdateTime` are that moment). Returns the id the alert will have.
    ///
    /// # Panics
    /// When the machine is not in the tenant.
    pub fn run_test(&self, tenant_id: &str, run: TestRun) -> Option<String> {
        let tenant = self.shared.tenant_id(tenant_id);
        let machine = self.shared.machines.lock().unwrap().lookup(&tenant, &run.machine).cloned();
        let machine = machine.unwrap_or_else(|| panic!("run_test: no machine {} in tenant {tenant}", run.machine));
        self.shared.alerts.lock().unwrap().schedule(&tenant, &machine, &run, Timestamp::now())
    }

    /// Edits an alert that has appeared, as an analyst would; its `lastUpdateTime` becomes now.
    /// False when there is no such (visible) alert.
    pub fn update_alert(&self, tenant_id: &str, alert_id: &str, edit: impl FnOnce(&mut Value)) -> bool {
        let tenant = self.shared.tenant_id(tenant_id);
        self.shared.alerts.lock().unwrap().update(&tenant, alert_id, Timestamp::now(), edit)
    }

    /// Resolves an alert: `status` `Resolved`, `resolvedTime` and `lastUpdateTime` now.
    pub fn resolve_alert(&self, tenant_id: &str, alert_id: &str) -> bool {
        let now = fmt_time(Timestamp::now());
        self.update_alert(tenant_id, alert_id, |a| {
            a["status"] = json!("Resolved");
            a["resolvedTime"] = json!(now);
        })
    }

    /// The alerts that have appeared so far, with their evidence, in the order they appeared.
    pub fn alerts(&self, tenant_id: &str) -> Vec<Value> {
        let tenant = self.shared.tenant_id(tenant_id);
        self.shared.alerts.lock().unwrap().all(&tenant, Timestamp::now())
    }
}
