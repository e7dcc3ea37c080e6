-- Argo CD health check for serving.kserve.io/InferenceService: "Healthy" means the spec in Git runs.
--
-- Argo CD's own check (resource_customizations/serving.kserve.io/InferenceService/health.lua, shipped since v2.8)
-- reads the conditions only. This one keeps its verdicts and messages, and adds before "Healthy":
--   * every status.canaryStatuses entry (KServe 0.20's native canary) must be ready ("Progressing");
--   * only where require_observed_generation is true: status.observedGeneration must equal metadata.generation
--     ("Progressing" until the controller has written status for the spec Argo CD applied).
-- Kept from upstream: Degraded when modelStatus.transitionStatus is neither UpToDate nor InProgress (a failed model
-- load), Suspended when Stopped=True, Progressing while any other condition is False or Unknown.
-- require_observed_generation is false as manifests/gitops/health and health-openshift-gitops render this file, for
-- KServe up to 0.20 (and its master of 2026-08-21): there status.observedGeneration is not the InferenceService's own
-- but a copy of the predictor Deployment's (InferenceServiceStatus.PropagateRawStatus) or Knative Service's
-- (PropagateStatus) counter, kserve/kserve issue 6081. A canary traffic step changes the InferenceService but no
-- Deployment, and an autoscaler changes the Deployment but not the InferenceService, so the equality would hold a
-- healthy service Progressing for good. health-observed-generation and health-openshift-gitops-observed-generation
-- render it true (the component health/require-observed-generation replaces the text between the two markers below),
-- for a KServe that sets observedGeneration from the InferenceService's own generation (kserve/kserve PR 6096, open as
-- of 2026-08-28).
-- Either way the pipeline's wave gate reads the version each cluster serves: no status shows a new pod stuck Pending
-- while the old ones keep the Deployment Available.
-- Argo CD runs a customization without Lua's standard libraries (base and table only): no string.*, os.* or io.*.

local require_observed_generation = --[[require-observed-generation]]false--[[require-observed-generation]]

local health = {status = "Progressing", message = "Waiting for InferenceService to report status..."}
if obj.status == nil then
  return health
end

if require_observed_generation and obj.status.observedGeneration ~= obj.metadata.generation then
  health.message = "waiting for the controller to observe generation " .. tostring(obj.metadata.generation)
    .. " (status is for generation " .. tostring(obj.status.observedGeneration) .. ")"
  return health
end

local progressing, degraded, unhealthy = false, false, 0
local message = ""
if obj.status.modelStatus ~= nil and obj.status.modelStatus.transitionStatus ~= "UpToDate" then
  if obj.status.modelStatus.transitionStatus == "InProgress" then
    progressing = true
  else
    degraded = true
  end
  message = "0: transitionStatus | " .. tostring(obj.status.modelStatus.transitionStatus)
end

if obj.status.conditions == nil then
  return health
end
for index, condition in ipairs(obj.status.conditions) do
  if condition.type == "Stopped" and condition.status == "True" then
    return {status = "Suspended", message = "InferenceService is Stopped"}
  end
  if condition.status == "Unknown" or (condition.status == "False" and condition.type ~= "Stopped") then
    unhealthy = unhealthy + 1  -- as upstream: Stopped=False is the healthy value, Stopped=Unknown is not
  end
  if condition.status ~= "True" and condition.type ~= "Stopped" then
    message = message .. " | " .. index .. ": " .. condition.type .. " | " .. condition.status
    if condition.reason ~= nil and condition.reason ~= "" then
      message = message .. " | " .. condition.reason
    end
    if condition.message ~= nil and condition.message ~= "" then
      message = message .. " | " .. condition.message
    end
  end
end

if degraded then
  return {status = "Degraded", message = message}
end
if progressing or unhealthy > 0 then
  return {status = "Progressing", message = message}
end
for _, canary in ipairs(obj.status.canaryStatuses or {}) do
  if canary.ready ~= true then
    return {status = "Progressing", message = "canary " .. tostring(canary.name) .. " is not ready (trafficPercent "
      .. tostring(canary.trafficPercent) .. ")"}
  end
end
return {status = "Healthy", message = "InferenceService is healthy."}
