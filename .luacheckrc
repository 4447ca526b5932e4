-- luacheck configuration: `make lint` runs `luacheck lua spec examples`.
std = "lua54"
max_line_length = 120
exclude_files = {"csrc/**", "rocks/tree/**"}

-- busted's globals (describe, it, assert, spy, ...) exist only in spec files.
files["spec/**/*_spec.lua"] = {std = "+busted"}
-- fixtures are generated Lua table literals; their lines can be long
files["spec/fixtures/**"] = {ignore = {"631"}}
-- the runner forwards its own arguments to busted by rewriting `arg`
files["spec/run.lua"] = {globals = {"arg"}}
-- `not (err <= tol)` is deliberate: it is true when err is NaN, where `err > tol` is false
files["spec/spec_helper.lua"] = {ignore = {"581"}}
