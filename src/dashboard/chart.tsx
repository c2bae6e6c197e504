/** A small uPlot chart of a function's recent traffic (requests and errors, or p50/p99 latency). */
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import type { InvocationStats } from './api.js';

export type ChartKind = 'requests' | 'latency';

const SERIES: Record<ChartKind, uPlot.Series[]> = {
  requests: [
    { label: 'requests', stroke: '#2563eb', fill: 'rgba(37, 99, 235, 0.15)', width: 1.5 },
    { label: 'errors', stroke: '#dc2626', fill: 'rgba(220, 38, 38, 0.2)', width: 1.5 },
  ],
  latency: [
    { label: 'p50 ms', stroke: '#059669', width: 1.5, spanGaps: true },
    { label: 'p99 ms', stroke: '#d97706', width: 1.5, spanGaps: true },
  ],
};

function columns(stats: InvocationStats, kind: ChartKind): uPlot.AlignedData {
  const t = stats.buckets.map((b) => Date.parse(b.start) / 1000);
  if (kind === 'requests') return [t, stats.buckets.map((b) => b.count), stats.buckets.map((b) => b.errors)];
  return [t, stats.buckets.map((b) => b.p50_ms), stats.buckets.map((b) => b.p99_ms)];
}

/** `label` describes the chart for screen readers (a canvas says nothing by itself). */
export function Chart({
  stats,
  kind,
  height = 48,
  label,
  axes = false,
}: {
  stats: InvocationStats;
  kind: ChartKind;
  height?: number;
  label: string;
  axes?: boolean;
}) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot>(undefined);

  useEffect(() => {
    const el = box.current!;
    plot.current = new uPlot(
      {
        width: Math.max(80, el.clientWidth),
        height,
        legend: { show: axes },
        cursor: { show: axes },
        axes: axes ? [{}, { size: 48 }] : [{ show: false }, { show: false }],
        scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(1, max)] } },
        series: [{}, ...SERIES[kind]],
      },
      columns(stats, kind),
      el,
    );
    const resize = new ResizeObserver(() => plot.current?.setSize({ width: Math.max(80, el.clientWidth), height }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      plot.current?.destroy();
    };
  }, [kind, height, axes]);

  useEffect(() => plot.current?.setData(columns(stats, kind)), [stats, kind]);

  return <div class="chart" ref={box} role="img" aria-label={label} />;
}
