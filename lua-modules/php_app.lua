--[[ php_app: release a PHP application the way most PHP shops do it:
git_deploy the code, empty the application caches, reload php-fpm, check
that the site answers, and go back to the previous release if it does not.

  master-cli run target='web*' php_app.deploy app=shop tag=v3
  master-cli run target='web*' php_app.rollback app=shop

Keyword arguments:
  app             the app, as defined in the master's apps.d (required;
                  the master puts its definition and credentials in the job)
  tag|branch|rev  what to release (as git_deploy)
  to              rollback only: the release, revision or tag to go back to
  cache_dirs      directories emptied after the switch: absolute, or
                  relative to the live release (e.g. {"var/cache"})
  service         the php-fpm service, reloaded through the service module
                  (systemd or SysV init; default php-fpm)
  reload_cmd      a command that reloads instead (e.g. a container's own);
                  a command argument: the master accepts it only from a
                  user who may also run cmd.run on the same minions
  health_url      must answer HTTP 200 after the reload (optional)
  health_retries  tries of health_url (default 5)
  health_interval seconds between tries (default 1)

The minion's [lua] roots must include the app's path.
]]

local M = {}

-- The git_deploy arguments this job carries (the app definition and its
-- sealed credentials), plus `extra`.
local function git_args(k, extra)
  local args = { app = k.app, repo_username = k.repo_username, repo_password = k.repo_password }
  for key, value in pairs(extra) do
    args[key] = value
  end
  return args
end

-- Runs `work` as a stage shown live; a failure ends the stage as failed
-- and raises again.
local function stage(name, work)
  halite.stage(name, "started")
  local ok, err = pcall(work)
  if not ok then
    halite.stage(name, "failed", tostring(err))
    error(err, 0)
  end
  halite.stage(name, "succeeded")
end

local function clear_caches(k)
  local live = k.app.path .. "/current"
  for _, dir in ipairs(k.cache_dirs or {}) do
    local path = dir:sub(1, 1) == "/" and dir or (live .. "/" .. dir)
    if halite.exists(path) then
      for _, name in ipairs(halite.list(path)) do
        halite.remove(path .. "/" .. name, { recursive = true })
      end
      halite.progress("emptied " .. path)
    end
  end
end

local function reload(k)
  if not k.reload_cmd then
    local r = halite.call("service.reload", { name = k.service or "php-fpm" })
    if not r.success then
      error(tostring(r.data))
    end
    return
  end
  local r = halite.run({ cmd = k.reload_cmd, timeout = 60 })
  if r.retcode ~= 0 then
    error(string.format("%s exited with %d: %s", k.reload_cmd, r.retcode, r.stderr))
  end
end

local function healthy(k)
  if not k.health_url then
    return true
  end
  local tries = k.health_retries or 5
  for attempt = 1, tries do
    local ok, answer = pcall(halite.http_get, k.health_url, { timeout = 5 })
    if ok and answer.status == 200 then
      return true
    end
    halite.progress(string.format("health %d/%d: %s", attempt, tries,
      ok and ("HTTP " .. answer.status) or tostring(answer)))
    if attempt < tries then
      halite.sleep(k.health_interval or 1)
    end
  end
  return false
end

local function need_app(k, fun)
  if type(k.app) ~= "table" then
    error(fun .. " needs app=NAME (an app defined in the master's apps.d)", 0)
  end
end

local function failed(what, r)
  local data = r.data
  local message = type(data) == "table" and (data.error or data.message) or tostring(data)
  return what .. ": " .. tostring(message)
end

function M.deploy(job)
  local k = job.kwargs
  need_app(k, "php_app.deploy")
  local deployed = halite.call("git_deploy.deploy",
    git_args(k, { tag = k.tag, branch = k.branch, rev = k.rev }))
  if not deployed.success then
    error(failed("git_deploy", deployed), 0)
  end
  stage("caches", function() clear_caches(k) end)
  stage("reload", function() reload(k) end)
  local ok = pcall(stage, "health", function()
    if not healthy(k) then
      error("health check failed: " .. k.health_url, 0)
    end
  end)
  if ok then
    return { app = k.app.name, release = deployed.data.release, revision = deployed.data.revision, result = "live" }
  end
  -- Unhealthy: back to the release that was live before, and reload again.
  local back = halite.call("git_deploy.rollback", git_args(k, {}))
  if back.success then
    reload(k)
  end
  error(string.format("release %s failed its health check; %s", tostring(deployed.data.release),
    back.success and ("rolled back to " .. tostring(back.data.release)) or failed("rollback failed", back)), 0)
end

function M.rollback(job)
  local k = job.kwargs
  need_app(k, "php_app.rollback")
  local back = halite.call("git_deploy.rollback", git_args(k, { to = k.to }))
  if not back.success then
    error(failed("git_deploy.rollback", back), 0)
  end
  stage("caches", function() clear_caches(k) end)
  stage("reload", function() reload(k) end)
  return { app = k.app.name, release = back.data.release, result = "rolled_back" }
end

function M.status(job)
  local k = job.kwargs
  need_app(k, "php_app.status")
  local status = halite.call("git_deploy.status", git_args(k, {}))
  if not status.success then
    error(failed("git_deploy.status", status), 0)
  end
  return status.data
end

return M
