--- hero.plot: line charts as standalone SVG files (no dependencies), for loss curves and the like.
--
--   hero.plot.svg_lines{title = "pre-training", xlabel = "update", ylabel = "loss",
--     series = {{name = "mlm", points = {{1, 4.2}, {2, 3.9}, ...}}, ...}, width = 640, height = 360}
--   hero.plot.write_svg(path, {charts...})   -- several charts stacked in one file
--
-- Non-finite points are skipped. Colours cycle through a fixed palette; the legend names every
-- series. Text is XML-escaped.
local plot = {}

local PALETTE = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"}

-- XML 1.0 has no character for the C0 controls other than tab, newline and carriage return (not
-- even as a reference), so they become "?"; a byte sequence that is not UTF-8 becomes U+FFFD.
local function esc(s)
  s = tostring(s)
  if not utf8.len(s) then
    local out, i = {}, 1
    while i <= #s do
      local ok, cp = pcall(utf8.codepoint, s, i)
      if ok then
        local ch = utf8.char(cp)
        out[#out + 1], i = ch, i + #ch
      else
        out[#out + 1], i = "\u{FFFD}", i + 1
      end
    end
    s = table.concat(out)
  end
  s = s:gsub("[%z\1-\8\11\12\14-\31]", "?")
  return (s:gsub("[&<>\"]", {["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;"}))
end

local function finite(x) return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge end

-- [lo, hi] widened to a range of positive width (a single value, or two that differ by less than
-- their spacing, would divide by zero).
local function widen(lo, hi)
  if hi > lo and hi / 2 - lo / 2 > 0 then return lo, hi end
  local d = math.max(1, math.abs(lo) * 1e-6)
  return lo - d, hi + d
end

-- "Nice" tick values covering [lo, hi]: about n steps of 1, 2 or 5 times a power of ten.
-- Ticks are counted as whole multiples of the step, so a step below the spacing of the values
-- (a flat curve around 1e17) cannot stall the count; a range that gives no sensible multiples
-- gets its two ends.
local function ticks(lo, hi, n)
  local raw = (hi / 2 - lo / 2) * 2 / n
  if not (raw > 0 and finite(raw)) then return {lo, hi} end
  local mag = 10 ^ math.floor(math.log(raw, 10))
  local step = mag
  for _, m in ipairs {1, 2, 5, 10} do
    if raw <= m * mag then
      step = m * mag
      break
    end
  end
  local first, last = math.ceil(lo / step), math.floor(hi / step + 1e-9)
  if not (finite(first) and finite(last)) or last - first > 4 * n or last < first then return {lo, hi} end
  local out = {}
  for k = first, last do out[#out + 1] = k * step end
  return out
end

local function fmt(v)
  if v == math.floor(v) and math.abs(v) < 1e6 then return string.format("%d", v) end
  return string.format("%.3g", v)
end

--- One chart as an SVG group (a string) placed at (x0, y0). See the module comment for opts.
function plot.chart(opts, x0, y0)
  if type(opts) ~= "table" then error("plot.chart: expected a table of chart options, got " .. type(opts), 2) end
  local W, H = opts.width or 640, opts.height or 360
  if type(W) ~= "number" or type(H) ~= "number" or not (W > 210 and H > 75 and finite(W) and finite(H)) then
    error(string.format("plot.chart: width and height must be numbers above 210 and 75, got %s and %s", tostring(W),
      tostring(H)), 2)
  end
  if opts.series ~= nil and type(opts.series) ~= "table" then
    error("plot.chart: series must be a list of {name =, points = {{x, y}, ...}}, got " .. type(opts.series), 2)
  end
  for i, s in ipairs(opts.series or {}) do
    if type(s) ~= "table" or (s.points ~= nil and type(s.points) ~= "table") then
      error(string.format("plot.chart: series %d must be a table {name =, points = {{x, y}, ...}}", i), 2)
    end
    for j, p in ipairs(s.points or {}) do
      if type(p) ~= "table" then
        error(string.format("plot.chart: series %d point %d must be a pair {x, y}, got %s", i, j, type(p)), 2)
      end
    end
  end
  local ml, mr, mt, mb = 60, 150, 30, 45
  local pw, ph = W - ml - mr, H - mt - mb
  local xmin, xmax, ymin, ymax = math.huge, -math.huge, math.huge, -math.huge
  for _, s in ipairs(opts.series or {}) do
    for _, p in ipairs(s.points or {}) do
      if finite(p[1]) and finite(p[2]) then
        xmin, xmax = math.min(xmin, p[1]), math.max(xmax, p[1])
        ymin, ymax = math.min(ymin, p[2]), math.max(ymax, p[2])
      end
    end
  end
  if xmin > xmax then xmin, xmax, ymin, ymax = 0, 1, 0, 1 end
  if opts.ymin then ymin = opts.ymin end
  xmin, xmax = widen(xmin, xmax)
  ymin, ymax = widen(ymin, ymax)
  local pad = (ymax / 2 - ymin / 2) * 0.1
  if finite(ymin - pad) and not opts.ymin then ymin = ymin - pad end
  if finite(ymax + pad) then ymax = ymax + pad end
  -- halves: the width of [-1e308, 1e308] is beyond the largest float
  local function at(v, lo, hi) return (v / 2 - lo / 2) / (hi / 2 - lo / 2) end
  local function X(v) return x0 + ml + at(v, xmin, xmax) * pw end
  local function Y(v) return y0 + mt + ph - at(v, ymin, ymax) * ph end
  local out = {}
  local function add(s) out[#out + 1] = s end
  add(string.format('<text x="%g" y="%g" font-size="15" font-weight="bold">%s</text>', x0 + ml, y0 + 20,
    esc(opts.title or "")))
  add(string.format('<rect x="%g" y="%g" width="%g" height="%g" fill="none" stroke="#444"/>', x0 + ml, y0 + mt, pw, ph))
  for _, t in ipairs(ticks(ymin, ymax, 5)) do
    add(string.format('<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#ddd"/>', x0 + ml, Y(t), x0 + ml + pw, Y(t)))
    add(string.format('<text x="%g" y="%g" font-size="11" text-anchor="end">%s</text>', x0 + ml - 5, Y(t) + 4, fmt(t)))
  end
  for _, t in ipairs(ticks(xmin, xmax, 6)) do
    local yb = y0 + mt + ph
    add(string.format('<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#444"/>', X(t), yb, X(t), yb + 4))
    add(string.format('<text x="%g" y="%g" font-size="11" text-anchor="middle">%s</text>', X(t), y0 + mt + ph + 17,
      fmt(t)))
  end
  add(string.format('<text x="%g" y="%g" font-size="12" text-anchor="middle">%s</text>', x0 + ml + pw / 2, y0 + H - 8,
    esc(opts.xlabel or "")))
  add(string.format('<text x="%g" y="%g" font-size="12" text-anchor="middle" transform="rotate(-90 %g %g)">%s</text>',
    x0 + 15, y0 + mt + ph / 2, x0 + 15, y0 + mt + ph / 2, esc(opts.ylabel or "")))
  for i, s in ipairs(opts.series or {}) do
    local color = esc(s.color or PALETTE[(i - 1) % #PALETTE + 1])
    local pts = {}
    for _, p in ipairs(s.points or {}) do
      if finite(p[1]) and finite(p[2]) then pts[#pts + 1] = string.format("%.2f,%.2f", X(p[1]), Y(p[2])) end
    end
    if #pts > 0 then
      add(string.format('<polyline fill="none" stroke="%s" stroke-width="1.6"%s points="%s"/>', color,
        s.dashed and ' stroke-dasharray="6 4"' or "", table.concat(pts, " ")))
    end
    local ly = y0 + mt + 10 + (i - 1) * 18
    add(string.format('<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="%s" stroke-width="2"%s/>', x0 + ml + pw + 10, ly,
      x0 + ml + pw + 30, ly, color, s.dashed and ' stroke-dasharray="6 4"' or ""))
    add(string.format('<text x="%g" y="%g" font-size="12">%s</text>', x0 + ml + pw + 35, ly + 4, esc(s.name or "")))
  end
  return table.concat(out, "\n"), W, H
end

--- A complete SVG document of the charts stacked vertically.
function plot.svg(charts)
  if type(charts) ~= "table" then error("plot.svg: expected an array of charts, got " .. type(charts), 2) end
  local parts, y, width = {}, 0, 0
  for _, c in ipairs(charts) do
    local g, w, h = plot.chart(c, 0, y)
    parts[#parts + 1] = g
    y = y + h
    width = math.max(width, w)
  end
  return string.format('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
    .. 'font-family="sans-serif">\n<rect width="100%%" height="100%%" fill="white"/>\n%s\n</svg>\n', width, y, width, y,
    table.concat(parts, "\n"))
end

--- One chart as a complete SVG document.
function plot.svg_lines(opts) return plot.svg({opts}) end

--- Writes the charts to path (atomically and durably: hero.io.write_atomic).
function plot.write_svg(path, charts)
  if type(path) ~= "string" then error("plot.write_svg: expected a path, got " .. type(path), 2) end
  require("hero.core").fs_write_atomic(path, plot.svg(charts))
end

--- Moving average of points {{x, y}} over `window` points (a smoother curve for noisy losses).
function plot.smooth(points, window)
  if type(points) ~= "table" or math.type(window) ~= "integer" or window < 1 then
    error("plot.smooth: expected points {{x, y}, ...} and a window of at least 1 point", 2)
  end
  local out, sum, q = {}, 0, {}
  for _, p in ipairs(points) do
    if finite(p[2]) then
      q[#q + 1] = p[2]
      sum = sum + p[2]
      if #q > window then sum = sum - table.remove(q, 1) end
      out[#out + 1] = {p[1], sum / #q}
    end
  end
  return out
end

return plot
