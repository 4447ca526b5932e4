--- hero.json: a strict JSON reader and a deterministic JSON writer, in plain Lua.
--
-- Reading (json.decode): RFC 8259 only — no comments, no trailing commas, no leading zeros, no
-- single quotes, no control characters inside strings, valid UTF-8 only, \u escapes with surrogate
-- pairs (a lone surrogate is an error). Errors name the line, column and byte. Values map to Lua as:
--   object -> table (keys are strings), array -> table 1..n with metatable json.array_mt,
--   string -> string, integer literal -> Lua integer (a float when it does not fit 64 bits),
--   fraction/exponent literal -> Lua float, true/false -> booleans, null -> json.null.
-- With {ordered = true} every object remembers its key order, returned by json.keys(obj).
-- With {allow_nan = true} the non-standard NaN, Infinity and -Infinity (as written by Python's json)
-- are accepted.
--
-- Writing (json.encode): object keys sorted, integers as integers, floats with the fewest digits
-- (at most 17) that read back to the same double and always with a '.' or an exponent (so they read
-- back as floats), strings escaped (", \, control characters) and checked for valid UTF-8. A table is
-- an array when it has the json.array_mt metatable or its keys are exactly 1..n (n >= 1); an empty
-- table without the metatable is {}. NaN/inf are refused unless {allow_nan = true}. {indent = n}
-- pretty-prints. Cycles are refused.
local json = {}

local byte, sub, find, char, format = string.byte, string.sub, string.find, string.char, string.format
local concat, sort = table.concat, table.sort
local tonumber, tostring, type, mtype = tonumber, tostring, type, math.type
local utf8char = utf8.char

--- The value JSON null decodes to (and encodes from).
json.null = setmetatable({}, {__name = "json.null", __tostring = function() return "null" end,
                              __newindex = function() error("json.null is read-only", 2) end})

--- Metatable of decoded arrays; set it on a table (json.array(t)) to encode it as an array even when empty.
json.array_mt = {__name = "json.array"}

--- Marks t (default {}) as a JSON array and returns it.
function json.array(t)
  return setmetatable(t or {}, json.array_mt)
end

function json.is_array(t)
  return type(t) == "table" and getmetatable(t) == json.array_mt
end

-- Key order of objects decoded with {ordered = true}; weak so it never keeps an object alive.
local key_order = setmetatable({}, {__mode = "k"})

--- The keys of a decoded JSON object in the order the text had them, or nil when that order is not
-- known (a table not made by the decoder with {ordered = true}).
function json.key_order(obj)
  local order = key_order[obj]
  if not order then return nil end
  local out = {}
  for i = 1, #order do out[i] = order[i] end
  return out
end

--- The keys of a decoded object in file order (decode with {ordered = true}), else sorted (strings
-- first, then other keys by their tostring).
function json.keys(obj)
  local order = key_order[obj]
  local out = {}
  if order then
    for i = 1, #order do out[i] = order[i] end
    return out
  end
  for k in pairs(obj) do out[#out + 1] = k end
  sort(out, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta > tb end -- "string" sorts before "number"
    if ta == "string" or ta == "number" then return a < b end
    return tostring(a) < tostring(b)
  end)
  return out
end

-- ------------------------------------------------------------------ decoding

local escape_char = {[34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f", [110] = "\n",
                     [114] = "\r", [116] = "\t"}

local function location(text, at)
  local line, line_start = 1, 1
  local i = 1
  while true do
    local nl = find(text, "\n", i, true)
    if not nl or nl >= at then break end
    line, line_start, i = line + 1, nl + 1, nl + 1
  end
  return line, at - line_start + 1
end

-- An options table's keys against the known ones, and each value's type: a misspelt option
-- ({allownan = true}) would be ignored without a word.
local function check_opts(who, opts, known)
  if opts == nil then return end
  if type(opts) ~= "table" then error(who .. ": options must be a table, got " .. type(opts), 3) end
  local names = {}
  for k in pairs(known) do names[#names + 1] = k end
  table.sort(names)
  for k, v in pairs(opts) do
    local want = known[k]
    if not want then
      error(string.format("%s: unknown option '%s' (%s)", who, tostring(k), table.concat(names, ", ")), 3)
    end
    local ok = (want == "boolean" and type(v) == "boolean") or (want == "string" and type(v) == "string")
      or (want == "count" and math.type(v) == "integer" and v >= 0)
      or (want == "indent" and (type(v) == "string" or (math.type(v) == "integer" and v >= 0)))
    if not ok then
      error(string.format("%s: option %s must be %s, got %s", who, k, want == "count" and "an integer >= 0"
        or want == "indent" and "a number of spaces (an integer >= 0) or a string" or "a " .. want,
        type(v) == "number" and tostring(v) or type(v)), 3)
    end
  end
end
local DECODE_OPTIONS = {ordered = "boolean", allow_nan = "boolean", max_depth = "count", source = "string"}
local ENCODE_OPTIONS = {indent = "indent", allow_nan = "boolean"}

--- Decodes a JSON text. opts: ordered (remember object key order), allow_nan, max_depth (512),
-- source (a name for error messages, e.g. the file path).
function json.decode(text, opts)
  if type(text) ~= "string" then
    error("json.decode: expected a string, got " .. type(text), 2)
  end
  check_opts("json.decode", opts, DECODE_OPTIONS)
  local ordered = opts and opts.ordered
  local allow_nan = opts and opts.allow_nan
  local max_depth = opts and opts.max_depth or 512
  local source = opts and opts.source
  local null, array_mt = json.null, json.array_mt
  local n = #text
  local pos = 1

  local function fail(msg, at)
    at = at or pos
    local line, col = location(text, at)
    error(format("json.decode: %s%s at line %d column %d (byte %d)", source and (source .. ": ") or "",
                 msg, line, col, at), 0)
  end

  local ok_utf8, bad = utf8.len(text)
  if not ok_utf8 then fail("invalid UTF-8", bad) end

  local function skip_ws()
    pos = find(text, "[^ \t\r\n]", pos) or n + 1
  end

  local function hex4(at)
    local h = sub(text, at, at + 3)
    if not find(h, "^%x%x%x%x$") then fail("\\u must be followed by 4 hex digits", at) end
    return tonumber(h, 16)
  end

  local function parse_string()
    -- pos is at the opening quote
    local i = pos + 1
    local parts, np = nil, 0
    while true do
      local j = find(text, '[%z\1-\31"\\]', i)
      if not j then fail("unterminated string", pos) end
      local c = byte(text, j)
      if c == 34 then
        pos = j + 1
        if not parts then return sub(text, i, j - 1) end
        np = np + 1
        parts[np] = sub(text, i, j - 1)
        return concat(parts, "", 1, np)
      elseif c == 92 then
        parts = parts or {}
        np = np + 1
        parts[np] = sub(text, i, j - 1)
        local e = byte(text, j + 1)
        local simple = escape_char[e]
        if simple then
          np = np + 1
          parts[np] = simple
          i = j + 2
        elseif e == 117 then -- \u
          local cp = hex4(j + 2)
          i = j + 6
          if cp >= 0xD800 and cp <= 0xDBFF then
            if sub(text, i, i + 1) ~= "\\u" then fail("lone high surrogate in a \\u escape", j) end
            local lo = hex4(i + 2)
            if lo < 0xDC00 or lo > 0xDFFF then fail("high surrogate not followed by a low surrogate", j) end
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
            i = i + 6
          elseif cp >= 0xDC00 and cp <= 0xDFFF then
            fail("lone low surrogate in a \\u escape", j)
          end
          np = np + 1
          parts[np] = utf8char(cp)
        elseif e == nil then
          fail("unterminated string", pos)
        else
          fail(format("invalid escape '\\%s'", char(e)), j)
        end
      else
        fail(format("control character 0x%02x inside a string (must be escaped)", c), j)
      end
    end
  end

  local function parse_number()
    local s, e = find(text, "^-?%d+", pos)
    if not s then fail("invalid number") end
    local digits = byte(text, pos) == 45 and pos + 1 or pos
    if byte(text, digits) == 48 and e > digits then fail("number with a leading zero") end
    local is_float = false
    if byte(text, e + 1) == 46 then
      local _, e2 = find(text, "^%d+", e + 2)
      if not e2 then fail("digits expected after '.'", e + 2) end
      e, is_float = e2, true
    end
    local c = byte(text, e + 1)
    if c == 101 or c == 69 then
      local _, e3 = find(text, "^[-+]?%d+", e + 2)
      if not e3 then fail("digits expected in the exponent", e + 2) end
      e, is_float = e3, true
    end
    local v = tonumber(sub(text, pos, e))
    -- A literal beyond the largest double would read as an infinity, which json.encode refuses and
    -- Python writes as Infinity: refused here too, so every decoded value encodes again.
    if v == math.huge or v == -math.huge then fail("number out of range (beyond the largest double)") end
    if is_float and mtype(v) == "integer" then v = v + 0.0 end
    pos = e + 1
    return v
  end

  local parse_value

  local function parse_array(depth)
    pos = pos + 1
    local t = setmetatable({}, array_mt)
    skip_ws()
    if byte(text, pos) == 93 then
      pos = pos + 1
      return t
    end
    local k = 0
    while true do
      k = k + 1
      t[k] = parse_value(depth)
      skip_ws()
      local c = byte(text, pos)
      if c == 44 then
        pos = pos + 1
        skip_ws()
      elseif c == 93 then
        pos = pos + 1
        return t
      else
        fail(c and "expected ',' or ']' in an array" or "unterminated array")
      end
    end
  end

  local function parse_object(depth)
    pos = pos + 1
    local t = {}
    local order = ordered and {} or nil
    if order then key_order[t] = order end
    skip_ws()
    if byte(text, pos) == 125 then
      pos = pos + 1
      return t
    end
    while true do
      if byte(text, pos) ~= 34 then fail(byte(text, pos) and "expected a string key" or "unterminated object") end
      local key = parse_string()
      skip_ws()
      if byte(text, pos) ~= 58 then fail("expected ':' after an object key") end
      pos = pos + 1
      skip_ws()
      local v = parse_value(depth)
      if order and t[key] == nil then order[#order + 1] = key end
      t[key] = v -- a repeated key keeps its last value, like Python's json
      skip_ws()
      local c = byte(text, pos)
      if c == 44 then
        pos = pos + 1
        skip_ws()
      elseif c == 125 then
        pos = pos + 1
        return t
      else
        fail(c and "expected ',' or '}' in an object" or "unterminated object")
      end
    end
  end

  local function literal(word, value)
    if sub(text, pos, pos + #word - 1) ~= word then fail("invalid literal") end
    pos = pos + #word
    return value
  end

  function parse_value(depth)
    local c = byte(text, pos)
    if c == 34 then return parse_string() end
    if c == 123 or c == 91 then
      if depth >= max_depth then fail(format("nesting deeper than %d", max_depth)) end
      if c == 123 then return parse_object(depth + 1) end
      return parse_array(depth + 1)
    end
    if c == 45 or (c and c >= 48 and c <= 57) then
      if allow_nan and sub(text, pos, pos + 8) == "-Infinity" then
        pos = pos + 9
        return -math.huge
      end
      return parse_number()
    end
    if c == 116 then return literal("true", true) end
    if c == 102 then return literal("false", false) end
    if c == 110 then return literal("null", null) end
    if allow_nan and c == 78 then return literal("NaN", 0 / 0) end
    if allow_nan and c == 73 then return literal("Infinity", math.huge) end
    if not c then fail("unexpected end of input") end
    -- a control byte or one of a multi-byte sequence is shown by its code, not written raw
    fail(c >= 32 and c < 127 and format("unexpected character '%s'", char(c))
      or format("unexpected byte 0x%02X", c))
  end

  skip_ws()
  local v = parse_value(0)
  skip_ws()
  if pos <= n then fail("trailing characters after the value") end
  return v
end

-- ------------------------------------------------------------------ encoding

local escapes = {['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
                 ["\r"] = "\\r", ["\t"] = "\\t"}
for c = 0, 31 do
  local ch = char(c)
  if not escapes[ch] then escapes[ch] = format("\\u%04x", c) end
end

local function encode_string(s)
  -- fast path: plain ASCII with nothing to escape
  if not find(s, '[%z\1-\31"\\\128-\255]') then return '"' .. s .. '"' end
  local ok, bad = utf8.len(s)
  if not ok then error(format("json.encode: string is not valid UTF-8 (byte %d)", bad), 0) end
  return '"' .. s:gsub('[%z\1-\31"\\]', escapes) .. '"'
end

--- The shortest decimal text (at most 17 significant digits) that reads back as x, marked as a float.
local function float_text(x)
  local s
  for digits = 15, 17 do
    s = format("%." .. digits .. "g", x)
    if tonumber(s) == x then break end
  end
  if not find(s, "[%.eEn]") then s = s .. ".0" end
  return s
end
json.float_text = float_text

--- Encodes a Lua value as JSON text. opts: indent (number of spaces or a string), allow_nan.
function json.encode(value, opts)
  check_opts("json.encode", opts, ENCODE_OPTIONS)
  local indent = opts and opts.indent
  if type(indent) == "number" then indent = string.rep(" ", indent) end
  local allow_nan = opts and opts.allow_nan
  local null, array_mt = json.null, json.array_mt
  local out, no = {}, 0
  local seen = {}
  local trail, depth = {}, 0 -- keys leading to the value being written, for error messages

  local function where()
    local parts = {"value"}
    for i = 1, depth do
      local k = trail[i]
      parts[#parts + 1] = mtype(k) == "integer" and ("[" .. k .. "]") or ("." .. tostring(k))
    end
    return concat(parts)
  end

  local function put(s)
    no = no + 1
    out[no] = s
  end

  local function enc(v, level)
    local tv = type(v)
    if tv == "string" then
      put(encode_string(v))
    elseif tv == "number" then
      if mtype(v) == "integer" then
        put(format("%d", v))
      elseif v ~= v or v == math.huge or v == -math.huge then
        if not allow_nan then
          error(format("json.encode: %s is %s, which JSON cannot represent (pass allow_nan = true for "
                       .. "Python's NaN/Infinity)", where(), v ~= v and "NaN" or tostring(v)), 0)
        end
        put(v ~= v and "NaN" or (v > 0 and "Infinity" or "-Infinity"))
      else
        put(float_text(v))
      end
    elseif tv == "boolean" then
      put(v and "true" or "false")
    elseif v == nil or v == null then
      put("null")
    elseif tv == "table" then
      if seen[v] then error(format("json.encode: %s contains itself (a cycle)", where()), 0) end
      -- the decoder's own limit: deeper values could not be read back (and would exhaust the C stack)
      if depth >= 512 then error(format("json.encode: %s is nested deeper than 512 levels", where()), 0) end
      seen[v] = true
      local count, maxn, all_int, all_str = 0, 0, true, true
      for k in pairs(v) do
        count = count + 1
        if mtype(k) == "integer" and k >= 1 then
          if k > maxn then maxn = k end
          all_str = false
        else
          all_int = false
          if type(k) ~= "string" then all_str = false end
        end
      end
      local is_array = getmetatable(v) == array_mt or (count > 0 and all_int)
      local nl, nl_in = "", ""
      if indent then
        nl = "\n" .. string.rep(indent, level)
        nl_in = nl .. indent
      end
      if is_array then
        if not all_int and count > 0 then
          error(format("json.encode: %s is marked as an array but has non-integer keys", where()), 0)
        end
        if maxn ~= count then
          error(format("json.encode: %s is an array with holes (use json.null for missing values)", where()), 0)
        end
        if count == 0 then
          put("[]")
        else
          put("[")
          for i = 1, maxn do
            if i > 1 then put(",") end
            put(nl_in)
            depth = depth + 1
            trail[depth] = i
            enc(v[i], level + 1)
            depth = depth - 1
          end
          put(nl)
          put("]")
        end
      elseif count == 0 then
        put("{}")
      else
        if not all_str then
          error(format("json.encode: %s mixes key types or has non-string keys (JSON object keys are "
                       .. "strings)", where()), 0)
        end
        local keys, nk = {}, 0
        for k in pairs(v) do
          nk = nk + 1
          keys[nk] = k
        end
        -- an explicit order (hero.data.writer.ordered: the reference's insertion order) when it
        -- lists exactly the keys, else sorted
        local mt = getmetatable(v)
        local order = type(mt) == "table" and rawget(mt, "__order") or nil
        if type(order) == "table" and #order == nk then
          local listed = {}
          for i = 1, nk do listed[order[i]] = true end
          local exact = true
          for i = 1, nk do if not listed[keys[i]] then exact = false end end
          if exact then
            for i = 1, nk do keys[i] = order[i] end
          else
            sort(keys)
          end
        else
          sort(keys)
        end
        put("{")
        for i = 1, nk do
          local k = keys[i]
          if i > 1 then put(",") end
          put(nl_in)
          put(encode_string(k))
          put(indent and ": " or ":")
          depth = depth + 1
          trail[depth] = k
          enc(v[k], level + 1)
          depth = depth - 1
        end
        put(nl)
        put("}")
      end
      seen[v] = nil
    else
      error(format("json.encode: %s is a %s, which JSON cannot represent", where(), tv), 0)
    end
  end

  enc(value, 0)
  return concat(out, "", 1, no)
end

-- ------------------------------------------------------------------ files

local function read_all(path, who)
  if type(path) ~= "string" then error(format("%s: expected a path string, got %s", who, type(path)), 0) end
  -- through the C module when it is there: regular files only (a FIFO would block io.open until
  -- something writes to it), and paths with a NUL byte refused
  local okc, core = pcall(require, "hero.core")
  if okc and core.fs_read then
    local ok, text = pcall(core.fs_read, path)
    if not ok then error(format("%s: %s", who, (tostring(text):gsub("^fs_read: ", ""))), 0) end
    return text
  end
  local f, err = io.open(path, "rb")
  if not f then error(format("%s: cannot open '%s': %s", who, path, err), 0) end
  local text, rerr = f:read("a")
  f:close()
  -- a directory opens but cannot be read
  if text == nil then error(format("%s: cannot read '%s': %s", who, path, tostring(rerr)), 0) end
  return text
end

--- Decodes the JSON file at path (opts as json.decode; errors name the file).
function json.read_file(path, opts)
  local o = {source = path}
  if opts then for k, v in pairs(opts) do o[k] = v end end
  o.source = path
  return json.decode(read_all(path, "json.read_file"), o)
end

--- Decodes a JSON-lines file (one value per non-empty line) into an array. A last line without
-- its newline that does not decode is a torn append (a writer killed in the middle of the line:
-- hero's appenders write a line and its newline together) and is left out, unless opts.complete
-- (an input that must be whole, such as an annotation file); any other bad line is an error
-- naming the file and line. Other opts go to json.decode.
function json.read_lines(path, opts)
  if opts ~= nil then
    local known = {complete = "boolean"}
    for k, v in pairs(DECODE_OPTIONS) do known[k] = v end
    check_opts("json.read_lines", opts, known)
  end
  local text = read_all(path, "json.read_lines")
  local out = json.array()
  local lineno = 0
  local complete = opts and opts.complete
  local torn_at = not complete and text:sub(-1) ~= "\n" and #text > 0 and select(2, text:gsub("\n", "")) + 1 or nil
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    if line:find("[^ \t\r]") then
      local o = {}
      if opts then for k, v in pairs(opts) do if k ~= "complete" then o[k] = v end end end
      o.source = path .. ":" .. lineno
      if lineno == torn_at then
        local ok, v = pcall(json.decode, line, o)
        if ok then out[#out + 1] = v end
      else
        out[#out + 1] = json.decode(line, o)
      end
    end
  end
  return out
end

--- Writes value as JSON to path (opts as json.encode), atomically and durably: through a temporary
-- file beside path (fsynced) renamed over it, then an fsync of the directory (hero.io.write_atomic),
-- so a crash leaves the old complete file or the new one.
function json.write_file(path, value, opts)
  -- a value that cannot be written is an error naming the file it was for (which is left as it was)
  local okt, text = pcall(json.encode, value, opts)
  if not okt then error(format("json.write_file: '%s' is not written: %s", tostring(path), tostring(text)), 2) end
  text = text .. "\n"
  local okc, core = pcall(require, "hero.core")
  if okc and core.fs_write_atomic then
    local ok, err = pcall(core.fs_write_atomic, path, text)
    if not ok then error(format("json.write_file: %s", tostring(err)), 0) end
    return
  end
  -- without the C module: temporary file and rename (no fsync from plain Lua)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then error(format("json.write_file: cannot create '%s': %s", tmp, err), 0) end
  local ok, werr = f:write(text)
  f:close()
  if not ok then
    os.remove(tmp)
    error(format("json.write_file: writing '%s' failed: %s", tmp, werr), 0)
  end
  local rok, rerr = os.rename(tmp, path)
  if not rok then
    os.remove(tmp)
    error(format("json.write_file: cannot rename to '%s': %s", path, rerr), 0)
  end
end

return json
