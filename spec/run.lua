--- Runs every spec with busted under Lua 5.4; the last line printed is "N passed, N failed, N skipped".
-- Used by `make test`, `.ci/run` and the rockspec's test command. Arguments go to busted
-- (e.g. `lua5.4 spec/run.lua --run=cuda` or `lua5.4 spec/run.lua --filter=matmul`).
local here = debug.getinfo(1, "S").source:match("^@(.*)/spec/run%.lua$") or "."
package.path = here .. "/lua/?.lua;" .. here .. "/lua/?/init.lua;" .. here .. "/spec/?.lua;" .. package.path
if not os.getenv("LUA_CPATH") then
  package.cpath = here .. "/csrc/build/?.so;" .. package.cpath
end

local args = {"--directory=" .. here, "--output=" .. here .. "/spec/summary_output.lua"}
for i = 1, #arg do args[#args + 1] = arg[i] end
for i = 1, #args do arg[i] = args[i] end -- luacheck: ignore 122 (busted reads the global arg)

require "busted.runner"({standalone = false})
