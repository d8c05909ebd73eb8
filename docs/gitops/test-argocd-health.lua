-- Runs argocd-health.lua on fixture objects, one per condition state, the
-- way Argo CD does (a global `obj`, the script's return value). Exits 1 on
-- the first wrong answer. Usage: lua5.4 test-argocd-health.lua <dir>
local dir = arg[1] or "."
local script = assert(loadfile(dir .. "/argocd-health.lua", "t", setmetatable({}, { __index = _G })))

local function cond(type_, status, reason, message)
  return { type = type_, status = status, reason = reason, message = message or reason }
end

local function tc(generation, observed, conditions, spec)
  return {
    apiVersion = "kok.dev/v1alpha1",
    kind = "TenantCluster",
    metadata = { name = "demo", generation = generation },
    spec = spec or { version = "v1.30.2" },
    status = conditions and { observedGeneration = observed, conditions = conditions } or nil,
  }
end

local cases = {
  { "new, no status yet", tc(1, nil, nil), "Progressing", "waiting for kok" },
  { "status for an older spec", tc(3, 2, { cond("Ready", "True", "Ready") }), "Progressing", "generation 3" },
  { "serving", tc(2, 2, {
      cond("Ready", "True", "Ready", "the tenant control plane is serving"),
      cond("Reconciling", "False", "Ready"),
      cond("Stalled", "False", "SpecValid"),
    }), "Healthy", "serving" },
  { "rolling out", tc(2, 2, {
      cond("Ready", "False", "Progressing", "APIServerReady: rolling out: 1/2 pods updated"),
      cond("Reconciling", "True", "Progressing", "APIServerReady: rolling out: 1/2 pods updated"),
      cond("Stalled", "False", "SpecValid"),
    }), "Progressing", "1/2 pods updated" },
  { "upgrading", tc(4, 4, {
      cond("Ready", "False", "Progressing", "upgrading from v1.30.2 to v1.31.0"),
      cond("Reconciling", "True", "Progressing", "upgrading from v1.30.2 to v1.31.0"),
    }), "Progressing", "upgrading" },
  { "invalid spec", tc(5, 5, {
      cond("Ready", "False", "InvalidSpec", "spec.version: a downgrade"),
      cond("Reconciling", "False", "InvalidSpec"),
      cond("Stalled", "True", "InvalidSpec", "spec.version: a downgrade"),
    }), "Degraded", "InvalidSpec: spec.version" },
  { "upgrade stuck (stalled while reconciling)", tc(6, 6, {
      cond("Ready", "False", "UpgradeStuck", "no progress for 30 min"),
      cond("Reconciling", "True", "UpgradeStuck", "no progress for 30 min"),
      cond("Stalled", "True", "UpgradeStuck", "no progress for 30 min"),
    }), "Degraded", "UpgradeStuck" },
  { "not ready, nothing rolling", tc(2, 2, {
      cond("Ready", "False", "ReconcileError", "Kubernetes API call failed"),
    }), "Progressing", "ReconcileError" },
  { "paused", tc(2, 2, { cond("Ready", "True", "Ready") }, { version = "v1.30.2", paused = true }),
    "Suspended", "spec.paused" },
  { "backup succeeded", {
      kind = "EtcdBackup", metadata = { generation = 1 },
      status = { observedGeneration = 1, phase = "Succeeded", conditions = {
        cond("Ready", "True", "Succeeded", "snapshot stored and verified by a restore"),
        cond("Reconciling", "False", "Succeeded"), cond("Stalled", "False", "Succeeded") } },
    }, "Healthy", "verified" },
  { "backup running", {
      kind = "EtcdBackup", metadata = { generation = 1 },
      status = { observedGeneration = 1, phase = "Running", conditions = {
        cond("Ready", "False", "Running", "streaming the snapshot"),
        cond("Reconciling", "True", "Running", "streaming the snapshot"),
        cond("Stalled", "False", "Running") } },
    }, "Progressing", "streaming" },
  { "backup failed without quorum", {
      kind = "EtcdBackup", metadata = { generation = 1 },
      status = { observedGeneration = 1, phase = "Failed", conditions = {
        cond("Ready", "False", "Failed", "etcd has no quorum"),
        cond("Reconciling", "False", "Failed"),
        cond("Stalled", "True", "Failed", "etcd has no quorum") } },
    }, "Degraded", "no quorum" },
  { "restore in progress", {
      kind = "EtcdRestore", metadata = { generation = 1 },
      status = { observedGeneration = 1, conditions = {
        cond("Ready", "False", "RestoringEtcd", "member Jobs running"),
        cond("Reconciling", "True", "RestoringEtcd", "member Jobs running") } },
    }, "Progressing", "member Jobs" },
  { "restore completed", {
      kind = "EtcdRestore", metadata = { generation = 1 },
      status = { observedGeneration = 1, phase = "Completed", conditions = {
        cond("Ready", "True", "Completed", "every member restored and the tenant API answers"),
        cond("Reconciling", "False", "Completed"), cond("Stalled", "False", "Completed") } },
    }, "Healthy", "every member restored" },
  { "restore failed", {
      kind = "EtcdRestore", metadata = { generation = 1 },
      status = { observedGeneration = 1, phase = "Failed", conditions = {
        cond("Ready", "False", "DeadlineExceeded", "phase RestoringEtcd did not finish within its 30-minute deadline"),
        cond("Reconciling", "False", "DeadlineExceeded"),
        cond("Stalled", "True", "DeadlineExceeded", "phase RestoringEtcd did not finish within its 30-minute deadline") } },
    }, "Degraded", "DeadlineExceeded: phase RestoringEtcd" },
  { "tenant held by a restore", tc(3, 3, {
      cond("Ready", "False", "RestoreInProgress", "EtcdRestore r1 is restoring etcd"),
      cond("Reconciling", "True", "RestoreInProgress", "EtcdRestore r1 is restoring etcd; the control plane is left to it"),
      cond("Stalled", "False", "SpecValid"),
    }), "Progressing", "RestoreInProgress: EtcdRestore r1" },
  { "conditions without Ready yet", tc(1, 1, {
      cond("Stalled", "False", "SpecValid"),
    }), "Progressing", "waiting for the Ready condition" },
}

local failed = 0
for _, case in ipairs(cases) do
  local name, object, want_status, want_message = case[1], case[2], case[3], case[4]
  local env = setmetatable({ obj = object }, { __index = _G })
  local run = assert(loadfile(dir .. "/argocd-health.lua", "t", env))
  local hs = run()
  local ok = hs.status == want_status and string.find(hs.message or "", want_message, 1, true) ~= nil
  print(string.format("%s %-45s -> %s: %s", ok and "ok  " or "FAIL", name, hs.status, hs.message))
  if not ok then
    print(string.format("     wanted %s with a message containing %q", want_status, want_message))
    failed = failed + 1
  end
end
if script == nil or failed > 0 then
  os.exit(1)
end
print(string.format("%d cases, all as expected", #cases))
