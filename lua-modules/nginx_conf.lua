--[[ nginx_conf: put a configuration file in place, have nginx validate
it, and put the previous one back if it does not pass; reload only a
valid, changed configuration.

  master-cli run target='lb*' nginx_conf.deploy path=/etc/nginx/conf.d/shop.conf \
      template=/etc/halite/templates/shop.conf.in port=8080
  master-cli run target='lb*' nginx_conf.rollback path=/etc/nginx/conf.d/shop.conf

Keyword arguments:
  path          the configuration file (required)
  content       the new file's text, or
  template      a template on the minion; `{{ name }}` is replaced by the
                keyword argument `name` (every other argument is a variable)
  validate_cmd  checks the configuration (default: nginx -t)
  reload_cmd    applies it (default: nginx -s reload)
                (both are command arguments: the master accepts them only
                from a user who may also run cmd.run on the same minions)

The previous file is kept as `<path>.halite-previous` for rollback. The
minion's [lua] roots must include the directory of `path` (and of the
template).
]]

local M = {}

local OPTIONS = { path = true, content = true, template = true, validate_cmd = true, reload_cmd = true }

local function run(cmd, what)
  local r = halite.run({ cmd = cmd, timeout = 60 })
  if r.retcode ~= 0 then
    error(string.format("%s (%s) exited with %d: %s%s", what, cmd, r.retcode, r.stdout, r.stderr), 0)
  end
end

local function validate(k)
  run(k.validate_cmd or "nginx -t", "validation")
end

local function reload(k)
  run(k.reload_cmd or "nginx -s reload", "reload")
end

local function wanted(k)
  if k.content then
    return k.content
  end
  if not k.template then
    error("nginx_conf.deploy needs content=TEXT or template=PATH", 0)
  end
  local vars = {}
  for key, value in pairs(k) do
    if not OPTIONS[key] then
      vars[key] = value
    end
  end
  return halite.render(halite.read(k.template), vars)
end

function M.deploy(job)
  local k = job.kwargs
  if not k.path then
    error("nginx_conf.deploy needs path=FILE", 0)
  end
  local new = wanted(k)
  local had = halite.exists(k.path)
  local old = had and halite.read(k.path) or nil
  if old == new then
    return { path = k.path, changed = false }
  end
  halite.stage("write", "started")
  if had then
    halite.write(k.path .. ".halite-previous", old)
  end
  halite.write(k.path, new)
  halite.stage("write", "succeeded")
  halite.stage("validate", "started")
  local ok, err = pcall(validate, k)
  if not ok then
    -- Put back what was there, so nginx keeps running a valid configuration.
    if had then
      halite.write(k.path, old)
    else
      halite.remove(k.path)
    end
    halite.stage("validate", "failed", err)
    error("the new configuration was refused and the previous one restored: " .. err, 0)
  end
  halite.stage("validate", "succeeded")
  halite.stage("reload", "started")
  reload(k)
  halite.stage("reload", "succeeded")
  return { path = k.path, changed = true, previous = had and (k.path .. ".halite-previous") or nil }
end

function M.rollback(job)
  local k = job.kwargs
  if not k.path then
    error("nginx_conf.rollback needs path=FILE", 0)
  end
  local saved = k.path .. ".halite-previous"
  if not halite.exists(saved) then
    error("no previous configuration saved for " .. k.path, 0)
  end
  local current = halite.read(k.path)
  halite.write(k.path, halite.read(saved))
  local ok, err = pcall(validate, k)
  if not ok then
    halite.write(k.path, current)
    error("the previous configuration does not validate any more; kept the current one: " .. err, 0)
  end
  halite.write(saved, current)
  reload(k)
  return { path = k.path, rolled_back = true }
end

return M
