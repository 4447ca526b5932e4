--- hero.io: tensor files (safetensors, .npy, .npz, extractor feature files, PyTorch checkpoints) and
-- hero.save/hero.load.
--
-- The readers and writers are in C (hero.core); this module adds the policy of hero.save/hero.load:
-- a flat {name = tensor} table is stored as a plain safetensors file (readable by any safetensors
-- library), and any other Lua value (nested tables mixing tensors, numbers, strings, booleans) is
-- stored with its tensors flattened under "."-joined path names and the rest of the structure as
-- JSON in the safetensors metadata under "hero.structure".
local core = require "hero.core"

local io_ = {}

for _, name in ipairs {"load_npy", "load_npz", "save_npy", "save_npz", "load_safetensors",
                       "save_safetensors", "load_features", "load_torch"} do
  io_[name] = core[name]
end

--- npz_to_bytes({name = tensor, ...}, {compress = false}): the .npz archive save_npz would write,
-- as a string (an LMDB value, a network payload); hero.data.decode_npz reads it back.
io_.npz_to_bytes = core.npz_to_bytes

--- write_atomic(path, bytes): replaces path as a whole, durably: the bytes go to
-- path.tmp.<pid>.<n> beside it (n numbers this process's writes, so threads writing one path do not
-- share a temporary file), are fsynced, renamed over path, and the directory is fsynced. A reader
-- (or a crash at any moment) sees the old complete file or the new complete file, never a torn one;
-- a writer killed midway leaves only a path.tmp.<pid>.<n> file behind
-- (io_.remove_stale_temporaries). Only a regular file (or a missing one) is replaced: a device, a
-- FIFO or a directory at path is an error.
io_.write_atomic = core.fs_write_atomic
--- fsync(path): the bytes of a file (or the entries of a directory) reach the disk.
io_.fsync = core.fs_sync

--- True when `name` is a temporary file of an atomic writer: "<name>.tmp.<pid>.<n>" (hero.save,
-- write_atomic, json.write_file), "<name>.tmp.<pid>" (earlier versions) or "<name>.tmp".
function io_.is_temporary(name)
  return name:match("%.tmp%.%d+$") ~= nil or name:match("%.tmp%.%d+%.%d+$") ~= nil or name:match("%.tmp$") ~= nil
end

--- Removes the temporary files (io_.is_temporary) directly inside dir that a killed writer left
-- behind; returns how many. Only call it when no other process writes into dir. A missing dir is fine.
function io_.remove_stale_temporaries(dir)
  local ok, names, is_dir = pcall(core.fs_listdir, dir)
  if not ok then return 0 end
  local n = 0
  for i, name in ipairs(names) do
    if not is_dir[i] and io_.is_temporary(name) and os.remove(dir .. "/" .. name) then n = n + 1 end
  end
  return n
end

--- Metadata key holding the structure of a nested value.
io_.STRUCTURE_KEY = "hero.structure"

local is_tensor = core.is_tensor

-- ------------------------------------------------------------------ JSON (the structure's own subset)

local escapes = {['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
                 ["\r"] = "\\r", ["\t"] = "\\t"}

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return escapes[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function is_utf8(s)
  return utf8.len(s) ~= nil
end

-- Numbers are written as strings inside typed nodes so 64-bit integers and every float survive
-- exactly (JSON numbers would pass through other tools' doubles).
local function float_repr(x)
  if x ~= x then return "nan" end
  if x == math.huge then return "inf" end
  if x == -math.huge then return "-inf" end
  if x == 0 and 1 / x < 0 then return "-0" end
  return string.format("%.17g", x)
end

local function float_parse(s)
  if s == "nan" then return 0 / 0 end
  if s == "inf" then return math.huge end
  if s == "-inf" then return -math.huge end
  if s == "-0" then return -0.0 end
  local v = tonumber(s)
  if type(v) ~= "number" then return nil end
  return v + 0.0
end

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function unhex(h)
  if #h % 2 ~= 0 or h:find("[^0-9a-f]") then return nil end
  return (h:gsub("..", function(b) return string.char(tonumber(b, 16)) end))
end

-- A small strict JSON reader returning plain Lua values (objects and arrays as tables; arrays are
-- marked by field n). Errors name the byte position.
local function json_decode(text)
  local pos = 1
  local function fail(msg)
    error(string.format("bad %s JSON at byte %d: %s", io_.STRUCTURE_KEY, pos, msg), 0)
  end
  local function ws()
    pos = text:find("[^ \t\r\n]", pos) or #text + 1
  end
  local value
  local function str()
    if text:sub(pos, pos) ~= '"' then fail("expected a string") end
    pos = pos + 1
    local parts = {}
    while true do
      local a, b = text:find('^[^"\\%c]+', pos)
      if a then
        parts[#parts + 1] = text:sub(a, b)
        pos = b + 1
      end
      local c = text:sub(pos, pos)
      if c == '"' then
        pos = pos + 1
        return table.concat(parts)
      elseif c == "\\" then
        local e = text:sub(pos + 1, pos + 1)
        local simple = {['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r",
                        t = "\t"}
        if simple[e] then
          parts[#parts + 1] = simple[e]
          pos = pos + 2
        elseif e == "u" then
          local h = text:match("^%x%x%x%x", pos + 2)
          if not h then fail("bad \\u escape") end
          local cp = tonumber(h, 16)
          pos = pos + 6
          if cp >= 0xD800 and cp <= 0xDBFF then
            local lo = text:match("^\\u(%x%x%x%x)", pos)
            lo = lo and tonumber(lo, 16)
            if not lo or lo < 0xDC00 or lo > 0xDFFF then fail("unpaired surrogate") end
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
            pos = pos + 6
          elseif cp >= 0xDC00 and cp <= 0xDFFF then
            fail("unpaired surrogate")
          end
          parts[#parts + 1] = utf8.char(cp)
        else
          fail("bad escape")
        end
      elseif c == "" then
        fail("unterminated string")
      else
        fail("control character in a string")
      end
    end
  end
  function value()
    ws()
    local c = text:sub(pos, pos)
    if c == "{" then
      pos = pos + 1
      local obj = {}
      ws()
      if text:sub(pos, pos) == "}" then
        pos = pos + 1
        return obj
      end
      while true do
        ws()
        local k = str()
        if obj[k] ~= nil then fail("duplicate key '" .. k .. "'") end
        ws()
        if text:sub(pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        obj[k] = value()
        ws()
        c = text:sub(pos, pos)
        pos = pos + 1
        if c == "}" then return obj end
        if c ~= "," then fail("expected ',' or '}'") end
      end
    elseif c == "[" then
      pos = pos + 1
      local arr = {n = 0}
      ws()
      if text:sub(pos, pos) == "]" then
        pos = pos + 1
        return arr
      end
      while true do
        arr.n = arr.n + 1
        arr[arr.n] = value()
        ws()
        c = text:sub(pos, pos)
        pos = pos + 1
        if c == "]" then return arr end
        if c ~= "," then fail("expected ',' or ']'") end
      end
    elseif c == '"' then
      return str()
    elseif text:sub(pos, pos + 3) == "true" then
      pos = pos + 4
      return true
    elseif text:sub(pos, pos + 4) == "false" then
      pos = pos + 5
      return false
    end
    fail("unexpected " .. (c == "" and "end of text" or "'" .. c .. "'"))
  end
  local v = value()
  ws()
  if pos <= #text then fail("trailing characters") end
  return v
end

-- ------------------------------------------------------------------ hero.save / hero.load

local function is_flat(tbl)
  if type(tbl) ~= "table" or is_tensor(tbl) then return false end
  for k, v in pairs(tbl) do
    if type(k) ~= "string" or not is_tensor(v) then return false end
  end
  return true
end

local type_order = {boolean = 1, number = 2, string = 3}

local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return type_order[ta] < type_order[tb] end
  if ta == "boolean" then return (not a) and b end
  if ta == "number" and a ~= a then return false end
  if ta == "number" and b ~= b then return true end
  return a < b
end

-- Encodes value v (at path, a list of keys) as a typed JSON node, collecting tensors into `tensors`
-- under unique UTF-8 names.
local function encode(v, path, tensors, seen)
  local where = #path > 0 and table.concat(path, ".") or "(root)"
  if is_tensor(v) then
    if v:is_freed() then error(string.format("hero.save: the tensor at '%s' was freed", where), 0) end
    local base = #path > 0 and table.concat(path, ".") or "tensor"
    if not is_utf8(base) or base == "__metadata__" then base = "tensor" end
    local name, k = base, 1
    while tensors[name] do
      k = k + 1
      name = base .. "#" .. k
    end
    tensors[name] = v
    return '{"t":' .. json_string(name) .. "}"
  end
  local tv = type(v)
  if tv == "number" then
    if math.type(v) == "integer" then return string.format('{"i":"%d"}', v) end
    return '{"f":"' .. float_repr(v) .. '"}'
  elseif tv == "string" then
    if is_utf8(v) then return '{"s":' .. json_string(v) .. "}" end
    return '{"x":"' .. hex(v) .. '"}'
  elseif tv == "boolean" then
    return v and '{"b":true}' or '{"b":false}'
  elseif tv == "table" then
    if seen[v] then error(string.format("hero.save: the table at '%s' contains itself (a cycle)", where), 0) end
    seen[v] = true
    local keys = {}
    for k in pairs(v) do
      if not type_order[type(k)] then
        error(string.format("hero.save: a key of the table at '%s' is a %s; keys must be strings, numbers or booleans",
          where, type(k)), 0)
      end
      keys[#keys + 1] = k
    end
    table.sort(keys, key_less)
    local parts = {}
    for i, k in ipairs(keys) do
      path[#path + 1] = tostring(k)
      parts[i] = "[" .. encode(k, {}, tensors, seen) .. "," .. encode(v[k], path, tensors, seen) .. "]"
      path[#path] = nil
    end
    seen[v] = nil
    return '{"k":[' .. table.concat(parts, ",") .. "]}"
  end
  error(string.format("hero.save: the value at '%s' is a %s; only tensors, numbers, strings, booleans and tables "
    .. "can be saved", where, tv), 0)
end

local function decode(node, tensors, where)
  local function bad(msg)
    error(string.format("hero.load: corrupt %s at %s: %s", io_.STRUCTURE_KEY, where, msg), 0)
  end
  if type(node) ~= "table" or node.n then bad("expected a typed object") end
  local tag, val = next(node)
  if tag == nil or next(node, tag) ~= nil then bad("expected exactly one type tag") end
  if tag == "t" then
    if type(val) ~= "string" then bad("tensor name must be a string") end
    local t = tensors[val]
    if not t then bad("no tensor named '" .. val .. "' in the file") end
    return t
  elseif tag == "i" then
    local v = type(val) == "string" and val:match("^%-?%d+$") and math.tointeger(tonumber(val))
    if not v then bad("bad integer") end
    return v
  elseif tag == "f" then
    local v = type(val) == "string" and float_parse(val)
    if not v then bad("bad float") end
    return v
  elseif tag == "s" then
    if type(val) ~= "string" then bad("bad string") end
    return val
  elseif tag == "x" then
    local v = type(val) == "string" and unhex(val)
    if not v then bad("bad hex string") end
    return v
  elseif tag == "b" then
    if type(val) ~= "boolean" then bad("bad boolean") end
    return val
  elseif tag == "k" then
    if type(val) ~= "table" or not val.n then bad("table entries must be an array") end
    local out = {}
    for i = 1, val.n do
      local pair = val[i]
      if type(pair) ~= "table" or pair.n ~= 2 then bad("table entry " .. i .. " is not a [key, value] pair") end
      local k = decode(pair[1], tensors, where)
      if type(k) == "table" or is_tensor(k) or k ~= k then bad("table key " .. i .. " is not a plain value") end
      local kname = tostring(k)
      out[k] = decode(pair[2], tensors, where == "(root)" and kname or where .. "." .. kname)
    end
    return out
  end
  bad("unknown type tag '" .. tostring(tag) .. "'")
end

--- Saves a value: a flat {name = tensor} table as plain safetensors; anything else (nested tables of
-- tensors and plain values) with its structure in the metadata. The file is replaced atomically.
function io_.save(path, value)
  if type(path) ~= "string" then error("hero.save: argument #1: expected a path string, got " .. type(path), 2) end
  -- every failure names the file (which is left as it was), whatever part of the value it was in
  local ok, err = pcall(function()
    if is_flat(value) then
      core.save_safetensors(path, value)
      return
    end
    local tensors = {}
    local structure = encode(value, {}, tensors, {})
    core.save_safetensors(path, tensors, {[io_.STRUCTURE_KEY] = structure})
  end)
  if not ok then
    local msg = tostring(err):gsub("^[^%s:]-hero/io%.lua:%d+: ", ""):gsub("^hero%.save: ", "")
    if not msg:find(path, 1, true) then msg = string.format("'%s' is not written: %s", path, msg) end
    error("hero.save: " .. msg, 2)
  end
end

-- "zip" / "legacy" when the file starts like a PyTorch checkpoint (torch.save), "safetensors" when
-- it starts like one (an 8-byte header length, then the JSON header's "{"), "unknown" for any
-- other start, nil when there is nothing there (load_safetensors then says why), "directory" or
-- "other" (a FIFO, a device: not opened, since opening a FIFO waits for a writer).
local function file_kind(path)
  local what = core.fs_kind(path)
  if what ~= "file" then return what end -- nil (nothing there), "directory" or "other" (a FIFO, ...)
  local f = io.open(path, "rb")
  if not f then return nil end
  local head = f:read(32)
  f:close()
  local torch = head and core.torch_sniff(head)
  if torch then return torch end
  -- the legacy magic number in pickle protocol 0/1's text form: load_torch names the protocol
  if head and head:sub(1, 25) == "L119547037146038801333356" then return "legacy" end
  if head and #head >= 9 and head:sub(9, 9) == "{" then return "safetensors" end
  return "unknown"
end

--- Loads what io_.save wrote (the same nested value), or any safetensors file as a flat
-- {name = tensor} table. Returns the value and the file's metadata table. A PyTorch checkpoint
-- (zip container or legacy stream, told apart from safetensors by its first bytes) goes to
-- load_torch and comes back with an empty metadata table. opts.mmap (safetensors): the tensors
-- view a private mapping of the file instead of a copy of it read into memory (no copy, pages
-- read as they are touched; the file must then not be rewritten in place while they live).
-- opts.verify = false (safetensors): the tensors are not checked against the CRC-32 list hero's
-- writer stores.
function io_.load(path, opts)
  if type(path) ~= "string" then error("hero.load: argument #1: expected a path string, got " .. type(path), 2) end
  if opts ~= nil and type(opts) ~= "table" then error("hero.load: argument #2: expected an options table", 2) end
  for k, v in pairs(opts or {}) do
    if k ~= "mmap" and k ~= "verify" then
      error(string.format("hero.load: unknown option '%s' (mmap, verify)", tostring(k)), 2)
    end
    if type(v) ~= "boolean" then
      error(string.format("hero.load: option '%s' must be a boolean, got %s", k, type(v)), 2)
    end
  end
  local kind = file_kind(path)
  if kind == "directory" or kind == "other" then
    error(string.format("hero.load: '%s' is %s, not a file", path, kind == "directory" and "a directory"
      or "not a regular file"), 2)
  end
  if kind == "zip" or kind == "legacy" then
    local ok, value = pcall(core.load_torch, path)
    if not ok then error((tostring(value):gsub("^[^\n]-io%.lua:%d+: ", "")), 2) end -- at the caller's line
    return value, {}
  end
  if kind == "unknown" then
    error("hero.load: '" .. path .. "' is neither a safetensors file (an 8-byte header length, then a JSON "
      .. "header) nor a PyTorch checkpoint (torch.save's zip archive or legacy pickle stream)", 2)
  end
  local read, tensors, meta = pcall(core.load_safetensors, path, opts and {mmap = opts.mmap == true,
    verify = opts.verify ~= false} or nil)
  if not read then error((tostring(tensors):gsub("^[^\n]-io%.lua:%d+: ", "")), 2) end -- at the caller's line
  local text = meta[io_.STRUCTURE_KEY]
  if text == nil then return tensors, meta end
  local ok, node = pcall(json_decode, text)
  if not ok then error("hero.load: '" .. path .. "': " .. node, 0) end
  return decode(node, tensors, "(root)"), meta
end

return io_
