--- Helpers shared by the database readers and writers.
local core = require "hero.core"
local json = require "hero.json"

-- MessagePack's nil and arrays are hero.json's null and array metatable, on the way in and out:
-- registered here, so that a reader or writer loaded on its own (require "hero.data.writer",
-- without hero.data) encodes [] as an array and null as nil, not as an empty map
core.data_set_markers(json.null, json.array_mt)

local util = {}

--- The directory holding path (a path without a slash lives in "."); trailing slashes are ignored.
function util.parent_dir(path)
  local p = path:gsub("/+$", "")
  if p == "" then return "/" end
  local parent = p:match("^(.*)/[^/]*$")
  if parent == nil then return "." end
  if parent == "" then return "/" end
  return parent
end

--- Whether err, the error value of a pcall around one item's reading, must stop the program instead
-- of marking that item bad and going on: the interrupt that lua5.4 raises on Ctrl-C (with the
-- position of the code it stopped, when that is Lua code), Lua's own out-of-memory error and hero's
-- out-of-memory errors. Skipping those would swallow a Ctrl-C, or train on other data than asked for
-- because memory ran short for a moment.
function util.is_fatal_error(err)
  if type(err) ~= "string" then return false end
  return err == "interrupted!" or err:match(":%d+: interrupted!$") ~= nil or err == "not enough memory"
    or err:find("out of memory", 1, true) ~= nil
end

function util.file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

function util.check_string(v, what, op)
  if type(v) ~= "string" then
    error(string.format("%s: %s must be a string, got %s", op, what, type(v)), 3)
  end
end

--- Raises "<op>: unknown option '<k>' (<known>)" for a key of the options table opts (nil: none)
-- that is not in the list `known`: a misspelt option ({compres = true}) would otherwise be
-- ignored. `level` as error()'s, counted from the caller of this function (default 3: the caller's
-- caller).
function util.check_options(op, opts, known, level)
  if opts == nil then return end
  if type(opts) ~= "table" then
    error(string.format("%s: expected an options table, got %s", op, type(opts)), level or 3)
  end
  local ok = {}
  for _, k in ipairs(known) do ok[k] = true end
  for k in pairs(opts) do
    if not ok[k] then
      error(string.format("%s: unknown option '%s' (%s)", op, tostring(k), table.concat(known, ", ")), level or 3)
    end
  end
end

return util
