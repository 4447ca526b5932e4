--- hero.cli and the `--help` of the example scripts.
local cli = require "hero.cli"
local helper = require "spec_helper"

local lua_cmd = string.format("LUA_PATH='%s' LUA_CPATH='%s' lua5.4", package.path, package.cpath)

-- output and exit status of a lua5.4 command line run from the checkout
local function run(args)
  local p = assert(io.popen(lua_cmd .. " " .. args .. " 2>&1; echo \"rc=$?\""))
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return out:gsub("rc=%d+%s*$", ""), rc
end

local write = helper.write_file

describe("hero.cli", function()
  it("reads the comment block a script starts with, without its markers or a #! line", function()
    local path = os.tmpname()
    write(path, "#!/usr/bin/env lua5.4\n--- Does things.\n--\n--   lua5.4 x.lua --n 3\n-- Options: --n N\n"
      .. "local x = 1 -- not usage\n-- nor this\n")
    assert.equal("Does things.\n\n  lua5.4 x.lua --n 3\nOptions: --n N", cli.leading_comment(path))
    write(path, "local x = 1\n")
    assert.equal("", cli.leading_comment(path))
    os.remove(path)
    local none, err = cli.leading_comment(path)
    assert.is_nil(none)
    assert.truthy(err:find(path, 1, true))
  end)

  it("does nothing without --help or -h", function()
    assert.is_nil(cli.help_if_asked({"--steps", "3", "--help-me"}, "@/nonexistent.lua"))
  end)

  it("prints a script's usage on --help or -h and exits with 0, before reading other options", function()
    local path = os.tmpname() .. ".lua"
    write(path, "--- Usage of the probe.\n--   --x N\n"
      .. "require('hero.cli').help_if_asked(arg, debug.getinfo(1, 'S').source)\nerror('not reached')\n")
    for _, flag in ipairs {"--help", "-h", "--bogus 1 --help"} do
      local out, rc = run(path .. " " .. flag)
      assert.equal(0, rc, out)
      assert.equal("Usage of the probe.\n  --x N\n", out)
    end
    os.remove(path)
  end)

  for _, script in ipairs {"pretrain", "finetune", "evaluate", "prepro", "demo", "parity"} do
    it("examples/" .. script .. ".lua --help prints its options", function()
      local out, rc = run("examples/" .. script .. ".lua --help")
      assert.equal(0, rc, out)
      assert.truthy(out:find("examples/" .. script .. ".lua", 1, true), out)
      assert.is_nil(out:find("^%-%-"), out) -- no comment markers
    end)
  end

  it("examples/parity.lua names a missing fixture directory, without a traceback", function()
    local out, rc = run("examples/parity.lua /nonexistent/fixtures")
    assert.equal(2, rc, out)
    assert.truthy(out:find("parity: ", 1, true), out)
    assert.truthy(out:find("/nonexistent/fixtures/config.json", 1, true), out)
    assert.is_nil(out:find("stack traceback", 1, true), out)
  end)

  it("examples/demo.lua and prepro.lua name an unusable directory in the command line's words", function()
    local out, rc = run("examples/demo.lua --out /proc/hero-demo-nope --tiny --quiet")
    assert.equal(2, rc, out)
    assert.truthy(out:find("demo: cannot use --out /proc/hero-demo-nope: ", 1, true), out)
    assert.is_nil(out:find("stack traceback", 1, true), out)
    local dir = os.tmpname()
    os.remove(dir)
    out, rc = run("examples/prepro.lua --resnet /nonexistent/r --slowfast /nonexistent/s --out " .. dir)
    os.execute("rm -rf '" .. dir .. "'")
    assert.equal(1, rc, out)
    assert.truthy(out:find("prepro: fs_listdir: cannot list the directory '/nonexistent/r'", 1, true), out)
    assert.is_nil(out:find("%.lua:%d+:"), out) -- no position inside the library
  end)
end)
