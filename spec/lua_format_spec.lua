--- The C sources hand Lua's formatter (luaL_error, lua_pushfstring) only the options it has:
-- %d %I %f %s %p %c %U %%. Anything else (%g, %zu, %u, PRId64) makes the error being raised a
-- different one, "invalid option ... to 'lua_pushfstring'", that hides what went wrong.
local here = debug.getinfo(1, "S").source:match("^@(.*)/spec/lua_format_spec%.lua$") or "."

local KNOWN = {d = true, I = true, f = true, s = true, p = true, c = true, U = true}

-- the files of the C module
local function c_files()
  local p = assert(io.popen('ls "' .. here .. '/csrc/"*.c "' .. here .. '/csrc/cpu/"*.c'))
  local files = {}
  for f in p:lines() do files[#files + 1] = f end
  p:close()
  return files
end

-- The format argument of every call in src: its string literals joined, and whether anything
-- other than literals and #PARAM (a macro such as PRId64) is spliced into it. Returns a list of
-- {line, text, spliced}.
local function formats(src)
  local out = {}
  local pos = 1
  while true do
    local s, e = src:find("lua[L_]+[%w_]*%f[%(]", pos)
    if not s then break end
    local name = src:sub(s, e)
    pos = e + 1
    if name == "luaL_error" or name == "lua_pushfstring" then
      local comma = src:find(",", pos, true)
      local i, text, spliced = comma + 1, {}, false
      while i <= #src do
        local c = src:sub(i, i)
        if c == '"' then
          local j = i + 1
          while src:sub(j, j) ~= '"' do j = j + (src:sub(j, j) == "\\" and 2 or 1) end
          text[#text + 1] = src:sub(i + 1, j - 1)
          i = j + 1
        elseif c == "," or c == ")" then
          break
        elseif c == "#" then -- a macro parameter made a string (an op name): no options in it
          i = (src:find("[^%w_]", i + 1) or #src + 1)
        elseif c:match("[%w_]") then
          spliced = true
          i = i + 1
        else
          i = i + 1
        end
      end
      local _, line = src:sub(1, s):gsub("\n", "")
      out[#out + 1] = {line = line + 1, text = table.concat(text), spliced = spliced}
    end
  end
  return out
end

local function unknown_option(text)
  for opt in text:gsub("%%%%", ""):gmatch("%%(.)") do
    if not KNOWN[opt] then return opt end
  end
end

describe("C calls of Lua's formatter", function()
  it("finds a bad option in a sample", function()
    local found = formats('x; luaL_error(L, "a %g b", v); lua_pushfstring(L, "%s: %" PRId64 " c", s, n);\n'
      .. 'luaL_error(L, "ok %d %I %f %s %%", 1);')
    assert.equal(3, #found)
    assert.equal("g", unknown_option(found[1].text))
    assert.is_true(found[2].spliced)
    assert.is_nil(unknown_option(found[3].text))
    assert.is_false(found[3].spliced)
  end)

  it("use only the options Lua has, with nothing spliced into the format", function()
    local bad, calls = {}, 0
    for _, path in ipairs(c_files()) do
      local f = assert(io.open(path))
      local src = f:read("a")
      f:close()
      for _, call in ipairs(formats(src)) do
        calls = calls + 1
        local opt = unknown_option(call.text)
        if opt or call.spliced then
          bad[#bad + 1] = string.format("%s:%d: %q%s", path:match("csrc/.*$"), call.line, call.text,
            opt and (" has %" .. opt) or " splices a macro")
        end
      end
    end
    assert.is_true(calls > 100, "found only " .. calls .. " calls")
    assert.equal("", table.concat(bad, "\n"))
  end)
end)
