--- hero.json: strict decoding with error positions, deterministic encoding.
local helper = require "spec_helper"
local json = require "hero.json"
local hero = require "hero"

local function err_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

describe("hero.json.decode", function()
  it("maps every JSON type to Lua", function()
    local v = json.decode([=[ {"s": "x", "i": 42, "n": -7, "f": 1.5, "e": 1e3, "E": -2.5E-3, "z": 0,
      "t": true, "F": false, "null": null, "a": [1, [2, []], {}], "o": {"k": "v"}} ]=])
    assert.equal("x", v.s)
    assert.equal("integer", math.type(v.i)); assert.equal(42, v.i)
    assert.equal("integer", math.type(v.n)); assert.equal(-7, v.n)
    assert.equal("float", math.type(v.f)); assert.equal(1.5, v.f)
    assert.equal("float", math.type(v.e)); assert.equal(1000.0, v.e)
    assert.equal(-2.5e-3, v.E)
    assert.equal("integer", math.type(v.z))
    assert.is_true(v.t); assert.is_false(v.F)
    assert.equal(json.null, v.null)
    assert.is_true(json.is_array(v.a)); assert.equal(3, #v.a)
    assert.is_true(json.is_array(v.a[2][2])); assert.equal(0, #v.a[2][2])
    assert.is_false(json.is_array(v.a[3]))
    assert.equal("v", v.o.k)
  end)

  it("keeps integers exact and turns too-large integers into floats", function()
    assert.equal(math.maxinteger, json.decode("9223372036854775807"))
    assert.equal(math.mininteger, json.decode("-9223372036854775808"))
    local big = json.decode("9223372036854775808")
    assert.equal("float", math.type(big)); assert.equal(2.0 ^ 63, big)
    assert.equal("integer", math.type(json.decode("-0")))
    local negzero = json.decode("-0.0")
    assert.equal("float", math.type(negzero)); assert.equal(-math.huge, 1 / negzero)
    assert.equal(0.1, json.decode("0.1"))
    assert.equal(5e-324, json.decode("5e-324"))
    assert.equal(1.7976931348623157e308, json.decode("1.7976931348623157e308"))
  end)

  it("decodes escapes, \\u escapes and surrogate pairs to UTF-8", function()
    assert.equal('"\\/\b\f\n\r\t', json.decode([["\"\\\/\b\f\n\r\t"]]))
    assert.equal("é", json.decode([["\u00e9"]]))
    assert.equal("\0", json.decode([["\u0000"]]))
    assert.equal("€", json.decode([["\u20AC"]]))
    assert.equal("😀", json.decode([["\ud83d\ude00"]]))
    assert.equal("\u{10FFFF}", json.decode([["\uDBFF\uDFFF"]]))
    assert.equal("naïve – 日本", json.decode('"naïve – 日本"'))
    assert.equal("a😀b", json.decode([["a\uD83D\uDE00b"]]))
  end)

  it("rejects what RFC 8259 rejects, naming line, column and byte", function()
    local cases = {
      {"[1,]", "unexpected character ']' at line 1 column 4 (byte 4)"},
      {'{"a":1,}', "expected a string key at line 1 column 8"},
      {"{'a':1}", "expected a string key"},
      {"01", "leading zero"},
      {"-01", "leading zero"},
      {"1.", "digits expected after '.'"},
      {".5", "unexpected character '.'"},
      {"1e", "digits expected in the exponent"},
      {"+1", "unexpected character '+'"},
      {"[1 2]", "expected ',' or ']'"},
      {'{"a" 1}', "expected ':'"},
      {"tru", "invalid literal"},
      {"nan", "invalid literal"},
      {"NaN", "unexpected character 'N'"},
      {"[", "unexpected end of input"},
      {"[1", "unterminated array"},
      {'{"a":1', "unterminated object"},
      {'"abc', "unterminated string"},
      {"1 2", "trailing characters"},
      {"", "unexpected end of input"},
      {'"a\tb"', "control character 0x09"},
      {[["\x"]], "invalid escape '\\x'"},
      {[["\u12"]], "4 hex digits"},
      {[["\ud800"]], "lone high surrogate"},
      {[["\ud800\u0041"]], "not followed by a low surrogate"},
      {[["\udc00"]], "lone low surrogate"},
      {'"\xff"', "invalid UTF-8 at line 1 column 2 (byte 2)"},
      {'"\xc0\xaf"', "invalid UTF-8"},
      {"// c\n1", "unexpected character '/'"},
      {"1e400", "number out of range"}, -- would be an infinity, which encode refuses
      {"[-1.5e999]", "number out of range (beyond the largest double) at line 1 column 2"},
      {"1" .. string.rep("0", 400), "number out of range"},
    }
    for _, c in ipairs(cases) do
      local msg = err_of(json.decode, c[1])
      assert.truthy(msg:find(c[2], 1, true), string.format("%q gave %q, wanted %q", c[1], msg, c[2]))
      assert.truthy(msg:find("^json.decode: "), msg)
    end
    local msg = err_of(json.decode, '{\n  "a": [1,\n   2 3]\n}')
    assert.truthy(msg:find("line 3 column 6 (byte 19)", 1, true), msg)
    msg = err_of(json.decode, "[1]x", {source = "file.json"})
    assert.truthy(msg:find("json.decode: file.json: trailing characters", 1, true), msg)
  end)

  it("limits nesting depth", function()
    local deep = string.rep("[", 600) .. string.rep("]", 600)
    assert.truthy(err_of(json.decode, deep):find("nesting deeper than 512", 1, true))
    local ok_depth = string.rep("[", 512) .. string.rep("]", 512)
    local v = json.decode(ok_depth)
    for _ = 1, 511 do v = v[1] end
    assert.equal(0, #v)
    assert.truthy(err_of(json.decode, "[[[1]]]", {max_depth = 2}):find("nesting deeper than 2", 1, true))
  end)

  it("accepts Python's NaN/Infinity only when asked", function()
    local v = json.decode("[NaN, Infinity, -Infinity]", {allow_nan = true})
    assert.is_true(v[1] ~= v[1])
    assert.equal(math.huge, v[2]); assert.equal(-math.huge, v[3])
    assert.truthy(err_of(json.decode, "-Infinity"):find("invalid number", 1, true))
  end)

  it("remembers object key order when asked, keeps the last of repeated keys", function()
    local v = json.decode('{"z": 1, "a": {"y": 1, "b": 2}, "m": 3, "z": 4}', {ordered = true})
    assert.same({"z", "a", "m"}, json.keys(v))
    assert.same({"y", "b"}, json.keys(v.a))
    assert.equal(4, v.z)
    local plain = json.decode('{"z": 1, "a": 2, "m": 3}')
    assert.same({"a", "m", "z"}, json.keys(plain))
  end)

  it("refuses non-strings", function()
    assert.truthy(err_of(json.decode, 42):find("expected a string, got number", 1, true))
  end)
end)

describe("hero.json.encode", function()
  it("writes sorted keys, integers as integers and floats that read back as floats", function()
    assert.equal('{"a":1,"b":1.0,"c":[1,2,null],"d":[],"e":{},"f":-0.0,"g":0.1,"h":1e+300}',
                 json.encode({b = 1.0, a = 1, c = {1, 2, json.null}, d = json.array(), e = {}, f = -0.0,
                              g = 0.1, h = 1e300}))
    assert.equal("9223372036854775807", json.encode(math.maxinteger))
    assert.equal("-9223372036854775808", json.encode(math.mininteger))
    assert.equal("9007199254740992.0", json.encode(2.0 ^ 53))
    assert.equal("true", json.encode(true))
    assert.equal("null", json.encode(json.null))
    assert.equal("null", json.encode(nil))
  end)

  it("round-trips every double exactly (shortest text of at most 17 digits)", function()
    math.randomseed(1234)
    local vals = {0.1, 1 / 3, 2 / 3, 1e-310, 5e-324, 1.7976931348623157e308, 123456789.123456789, -2.5e-8}
    for _ = 1, 2000 do
      local bits = math.random(0, math.maxinteger)
      local x = string.unpack("<d", string.pack("<i8", bits))
      if x == x and x ~= math.huge and x ~= -math.huge then vals[#vals + 1] = x end
    end
    for _, x in ipairs(vals) do
      local text = json.encode(x)
      local back = json.decode(text)
      assert.equal("float", math.type(back))
      assert.equal(string.pack("<d", x), string.pack("<d", back), text)
      local mantissa = text:gsub("%.0$", ""):match("^-?([%d.]+)"):gsub("%.", ""):gsub("^0+", "")
      assert.truthy(#mantissa <= 17, text)
    end
    assert.equal("0.1", json.encode(0.1))
    assert.equal("0.30000000000000004", json.encode(0.1 + 0.2))
  end)

  it("escapes strings and checks UTF-8", function()
    assert.equal([["q\"b\\s/n\n\t\u0001\u001fé😀"]], json.encode('q"b\\s/n\n\t\1\31é😀'))
    assert.equal('"\\u0000"', json.encode("\0"))
    assert.truthy(err_of(json.encode, {k = "a\xffb"}):find("not valid UTF-8 (byte 2)", 1, true))
    local s = "\1\2 tab\t\"quote\" back\\slash é 😀 \u{10FFFF}"
    assert.equal(s, json.decode(json.encode(s)))
  end)

  it("refuses what JSON cannot hold, naming where", function()
    assert.truthy(err_of(json.encode, {a = {b = {0 / 0}}}):find("value.a.b[1] is NaN", 1, true))
    assert.truthy(err_of(json.encode, {x = math.huge}):find("value.x is inf", 1, true))
    assert.equal("[NaN,Infinity,-Infinity]", json.encode({0 / 0, math.huge, -math.huge}, {allow_nan = true}))
    assert.truthy(err_of(json.encode, {1, nil, 3}):find("array with holes", 1, true))
    assert.truthy(err_of(json.encode, {1, x = 2}):find("non-string keys", 1, true))
    assert.truthy(err_of(json.encode, {[true] = 1}):find("non-string keys", 1, true))
    assert.truthy(err_of(json.encode, {f = print}):find("value.f is a function", 1, true))
    local cyc = {}
    cyc.self = cyc
    assert.truthy(err_of(json.encode, cyc):find("value.self contains itself", 1, true))
    -- as deep as the decoder reads, and no deeper (a C stack overflow before)
    local function nested(levels)
      local root = {}
      local c = root
      for _ = 2, levels do
        c[1] = {}
        c = c[1]
      end
      return root
    end
    assert.is_table(json.decode(json.encode(nested(512))))
    assert.truthy(err_of(json.encode, nested(513)):find("is nested deeper than 512 levels", 1, true))
    assert.truthy(err_of(json.encode, nested(100000)):find("is nested deeper than 512 levels", 1, true))
    -- a table that appears twice (not a cycle) is fine
    local shared = {1}
    assert.equal('{"a":[1],"b":[1]}', json.encode({a = shared, b = shared}))
  end)

  it("pretty-prints with indent", function()
    assert.equal('{\n  "a": [\n    1,\n    {\n      "b": null\n    }\n  ],\n  "c": {}\n}',
                 json.encode({a = {1, {b = json.null}}, c = {}}, {indent = 2}))
  end)

  it("round-trips nested documents, fast enough for big files", function()
    local doc = {}
    for i = 1, 4000 do
      doc[i] = {id = tostring(i), ts = {i * 0.37, i * 1.5}, ids = {i, i + 1, i + 2}, ok = i % 2 == 0,
                text = "row " .. i .. " é\n"}
    end
    local t0 = os.clock()
    local text = json.encode(doc)
    local back = json.decode(text)
    local dt = os.clock() - t0
    assert.truthy(#text > 350000)
    assert.equal(text, json.encode(back))
    assert.same(doc[1234].ts, back[1234].ts)
    assert.truthy(dt < 5, string.format("0.4 MB took %.2f s", dt))
  end)
end)

describe("hero.json options", function()
  it("refuses unknown options and values of the wrong kind", function()
    -- a misspelt allow_nan or indent was ignored without a word
    helper.assert_error_contains(function() json.decode("[1]", {allownan = true}) end,
      "json.decode: unknown option 'allownan' (allow_nan, max_depth, ordered, source)")
    helper.assert_error_contains(function() json.decode("[1]", {max_depth = "abc"}) end,
      "option max_depth must be an integer >= 0, got string")
    helper.assert_error_contains(function() json.encode({1}, {indnet = 2}) end, "json.encode: unknown option 'indnet'")
    helper.assert_error_contains(function() json.encode({1}, {indent = 2.5}) end, "option indent must be")
    helper.assert_error_contains(function() json.encode({1}, 2) end, "json.encode: options must be a table")
    assert.equal("[\n  1\n]", json.encode({1}, {indent = 2}))
    -- a control byte is named by its code, not written raw into the message
    helper.assert_error_contains(function() json.decode("[1,\v2]") end, "unexpected byte 0x0B at line 1 column 4")
    assert.equal("[\n\t1\n]", json.encode({1}, {indent = "\t"}))
  end)
end)

describe("hero.json files", function()
  it("writes, reads and reads JSON lines", function()
    local path = os.tmpname()
    json.write_file(path, {b = {1, 2}, a = "x"})
    local f = io.open(path, "rb")
    assert.equal('{"a":"x","b":[1,2]}\n', f:read("a"))
    f:close()
    assert.same({a = "x", b = {1, 2}}, json.read_file(path))
    f = io.open(path, "wb")
    f:write('{"a": 1}\n\n{"a": 2}\n[3]')
    f:close()
    local rows = json.read_lines(path)
    assert.equal(3, #rows); assert.equal(2, rows[2].a); assert.equal(3, rows[3][1])
    f = io.open(path, "wb")
    f:write('{"a": 1}\n{"a": }\n')
    f:close()
    assert.truthy(err_of(json.read_lines, path):find(path .. ":2: unexpected character '}'", 1, true))
    assert.truthy(err_of(json.read_file, path):find(path .. ": trailing characters after the value at line 2", 1, true))
    -- a torn last line: left out of a log, an error in a file that must be whole
    f = io.open(path, "wb")
    f:write('{"a": 1}\n{"a": 2')
    f:close()
    assert.equal(1, #json.read_lines(path))
    assert.truthy(err_of(json.read_lines, path, {complete = true}):find(path .. ":2:", 1, true))
    os.remove(path)
    assert.truthy(err_of(json.read_file, path):find("json.read_file: no such file: '" .. path .. "'", 1, true))
    assert.equal("json.read_file: expected a path string, got nil", err_of(json.read_file, nil))
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "'"))
    assert.truthy(err_of(json.read_lines, dir):find("json.read_lines: '" .. dir .. "' is not a regular file", 1, true))
    -- a FIFO is refused at once (opening it to read would wait for a writer), as are the tensor
    -- loaders'; a path with a NUL byte would name another file
    local fifo = dir .. "/pipe"
    if os.execute("mkfifo '" .. fifo .. "' 2>/dev/null") then
      assert.truthy(err_of(json.read_file, fifo):find("is not a regular file", 1, true))
      for _, load in ipairs {hero.load, hero.io.load_npy, hero.io.load_safetensors} do
        local ok, err = pcall(load, fifo)
        assert.is_false(ok)
        assert.truthy(tostring(err):find("not a", 1, true), tostring(err))
      end
      os.remove(fifo)
    end
    local ok_dir, err_dir = pcall(hero.load, dir)
    assert.is_false(ok_dir)
    assert.truthy(tostring(err_dir):find("hero.load: '" .. dir .. "' is a directory, not a file", 1, true))
    assert.truthy(err_of(json.read_file, dir .. "/a\0b"):find("holds a NUL byte", 1, true))
    local ok, err = pcall(hero.save, dir .. "/a\0b", {x = hero.zeros(1)})
    assert.is_false(ok)
    assert.truthy(tostring(err):find("holds a NUL byte", 1, true), tostring(err))
    assert.is_nil(io.open(dir .. "/a")) -- nothing written under the cut-short name
    os.execute("rmdir '" .. dir .. "'")
  end)
end)
