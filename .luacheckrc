std = "lua54"
max_line_length = 120
files["spec/**/*_spec.lua"] = {std = "+busted"}
files["spec/fixtures/**"] = {ignore = {"631"}}
exclude_files = {"csrc/**"}
