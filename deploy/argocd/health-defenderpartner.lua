-- Argo CD health check for detect.dev/v1alpha1 DefenderPartner (defender-operator).
-- Healthy: Ready=True for the current generation (the partner is Attached).
-- Progressing: the operator has not yet observed the current generation, or Ready=False with a
--   transient reason (Throttled, DefenderUnreachable, Pending, ...) that it retries by itself.
-- Degraded: Ready=False with a terminal reason: it stays so until the partner or its Secret is fixed.
-- Suspended: spec.suspend is true (reason Suspended).
local hs = { status = "Progressing", message = "Waiting for the operator to report status" }

-- Reasons that need a person to fix the partner, its Secret or the Entra app (README, "Status
-- reasons and their fixes"); anything else is retried by the operator.
local terminal = {
  InvalidSpec = true, SecretNotFound = true, SecretKeyMissing = true, SecretKeyInvalid = true, InvalidSecret = true,
  SecretExpired = true, CredentialMissing = true, AppNotFound = true, AppDisabled = true,
  TenantNotFound = true, TenantInvalid = true, WrongCloud = true, DefenderNotProvisioned = true,
  ConfigError = true, Blocked = true, TokenMismatch = true, MissingPermission = true,
  DisabledFeature = true, ApiHostNotAllowed = true, InvalidFinding = true, PartnerNotFound = true,
  DeliveryFailed = true, QuotaExceeded = true, PushFailed = true, UnsupportedSpec = true,
  CredentialsIncomplete = true, CertificateInvalid = true, CertificateExpired = true, AssertionRejected = true, ServiceAccountNotFound = true, TokenRequestDenied = true, FederatedCredentialMismatch = true,
}

local function with_message(prefix, reason, message)
  local text = prefix
  if reason ~= nil and reason ~= "" then text = text .. " (" .. reason .. ")" end
  if message ~= nil and message ~= "" then text = text .. ": " .. message end
  return text
end

if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. string.format("%d", generation)
  return hs
end

local ready = nil
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" then ready = condition end
  end
end
if ready == nil then
  hs.message = "Waiting for the Ready condition"
  return hs
end
if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  hs.message = "Waiting for the operator to observe generation " .. string.format("%d", generation)
  return hs
end

local reason = ready.reason or obj.status.reason
local message = ready.message or obj.status.message
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = with_message("Ready", reason, message)
elseif reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = with_message("Suspended", nil, message)
elseif ready.status == "False" and terminal[reason] then
  hs.status = "Degraded"
  hs.message = with_message("Not ready", reason, message)
else
  hs.status = "Progressing"
  hs.message = with_message("Not ready yet", reason, message)
end
return hs
