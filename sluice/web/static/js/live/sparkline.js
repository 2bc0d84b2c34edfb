// Inline SVG sparklines, built with DOM calls (CSP-safe, no innerHTML).

const SVG = "http://www.w3.org/2000/svg";

/**
 * Draw points [[x, y], ...] into an <svg viewBox="0 0 W H"> as an area + line.
 * @param {SVGSVGElement} svg
 * @param {Array<[number, number]>} points
 * @param {{xMin?: number, xMax?: number}} [range]
 */
export function drawSparkline(svg, points, range = {}) {
  const vb = svg.viewBox.baseVal;
  const w = vb && vb.width ? vb.width : 120;
  const h = vb && vb.height ? vb.height : 28;
  let line = svg.querySelector(".spark-line");
  let area = svg.querySelector(".spark-area");
  if (!line) {
    area = document.createElementNS(SVG, "path");
    area.setAttribute("class", "spark-area");
    line = document.createElementNS(SVG, "path");
    line.setAttribute("class", "spark-line");
    svg.append(area, line);
  }
  if (!points.length) {
    line.setAttribute("d", "");
    area.setAttribute("d", "");
    return;
  }
  const xMin = range.xMin ?? points[0][0];
  const xMax = range.xMax ?? points[points.length - 1][0];
  let yMax = 0;
  for (const p of points) if (p[1] > yMax) yMax = p[1];
  const pad = 2;
  const sx = xMax > xMin ? (w - 2) / (xMax - xMin) : 0;
  const sy = yMax > 0 ? (h - pad * 2) / yMax : 0;
  let d = "";
  let firstX = 0;
  let lastX = 0;
  for (let i = 0; i < points.length; i++) {
    const x = xMax > xMin ? 1 + (points[i][0] - xMin) * sx : w - 1;
    const y = h - pad - points[i][1] * sy;
    d += `${i ? "L" : "M"}${x.toFixed(1)} ${y.toFixed(1)}`;
    if (i === 0) firstX = x;
    lastX = x;
  }
  if (points.length === 1) {
    d += `L${(lastX - 0.01).toFixed(2)} ${(h - pad - points[0][1] * sy).toFixed(1)}`;
  }
  line.setAttribute("d", d);
  area.setAttribute("d", `${d}L${lastX.toFixed(1)} ${h}L${firstX.toFixed(1)} ${h}Z`);
}
