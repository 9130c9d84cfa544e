--[[ maintenance: put a maintenance page up or take it down, for web
servers configured to serve it when the file exists (the usual
`if (-f $document_root/maintenance.html) { return 503; }`).

  master-cli run target='web*' maintenance.on docroot=/srv/shop/current/public message='Back at 14:00'
  master-cli run target='web*' maintenance.off docroot=/srv/shop/current/public
  master-cli run target='web*' maintenance.status docroot=/srv/shop/current/public

Keyword arguments:
  docroot  the site's document root (required)
  page     the file name (default: maintenance.html)
  message  the text shown (default: a short notice)
]]

local M = {}

local PAGE = [[<!doctype html>
<html><head><meta charset="utf-8"><title>Maintenance</title></head>
<body><h1>Down for maintenance</h1><p>{{ message }}</p></body></html>
]]

local function page_path(k)
  if not k.docroot then
    error("maintenance needs docroot=DIR", 0)
  end
  return k.docroot .. "/" .. (k.page or "maintenance.html")
end

function M.on(job)
  local path = page_path(job.kwargs)
  local message = job.kwargs.message or "We will be back shortly."
  halite.write(path, halite.render(PAGE, { message = message }))
  halite.log("maintenance page up: " .. path)
  return { enabled = true, page = path }
end

function M.off(job)
  local path = page_path(job.kwargs)
  local removed = halite.remove(path)
  halite.log("maintenance page down: " .. path)
  return { enabled = false, page = path, removed = removed }
end

function M.status(job)
  local path = page_path(job.kwargs)
  return { enabled = halite.exists(path), page = path }
end

return M
