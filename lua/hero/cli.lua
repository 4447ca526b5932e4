--- hero.cli: `--help` for command-line scripts. A script's usage is the comment block it starts
-- with (what each of examples/*.lua documents); `--help` or `-h` prints it and exits.
--
--   require("hero.cli").help_if_asked(arg, debug.getinfo(1, "S").source)
local M = {}

--- The comment block at the top of the Lua file at `path` (a "#!" line skipped), without the
-- comment markers; nil and the reason when the file cannot be read.
function M.leading_comment(path)
  local f, err = io.open(path, "r")
  if not f then return nil, err end
  local lines, first = {}, true
  for line in f:lines() do
    if not (first and line:match("^#!")) then
      local text = line:match("^%-%-%-? ?(.*)$")
      if not text then break end
      lines[#lines + 1] = text
    end
    first = false
  end
  f:close()
  return table.concat(lines, "\n")
end

--- When argv (a script's `arg`) holds `--help` or `-h`: prints the usage of the script whose chunk
-- source is `source` (debug.getinfo(1, "S").source in the script) to stdout and exits with 0.
-- Otherwise returns nothing, having done nothing.
function M.help_if_asked(argv, source)
  if type(argv) ~= "table" then error("help_if_asked: argv must be the script's arg table, got " .. type(argv), 2) end
  local asked = false
  for _, a in ipairs(argv) do
    if a == "--help" or a == "-h" then asked = true end
  end
  if not asked then return end
  local path = type(source) == "string" and source:match("^@(.+)$")
  local text, err
  if path then text, err = M.leading_comment(path) else err = "the script's file is unknown" end
  io.stdout:write(text and text ~= "" and text .. "\n" or ("no usage found: " .. tostring(err) .. "\n"))
  io.stdout:flush()
  os.exit(0)
end

return M
