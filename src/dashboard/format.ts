/** How numbers and times read on the dashboard. */
export const ms = (v: number | null | undefined) => (v == null ? '–' : v < 10 ? `${v.toFixed(1)} ms` : `${Math.round(v)} ms`);
export const percent = (v: number | null | undefined) => (v == null ? '–' : `${(v * 100).toFixed(v > 0 && v < 0.1 ? 1 : 0)} %`);
export const perMinute = (perSecond: number) => {
  const m = perSecond * 60;
  return `${m === 0 ? 0 : m < 0.1 ? m.toFixed(2) : m < 10 ? m.toFixed(1) : Math.round(m)}/min`;
};
export const bytes = (n: number | null | undefined) =>
  n == null ? '–' : n < 1024 ? `${n} B` : n < 2 ** 20 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 2 ** 20).toFixed(1)} MB`;
export const time = (iso: string) => new Date(iso).toLocaleTimeString();
export const dateTime = (iso: string) => new Date(iso).toLocaleString();
export const ago = (iso: string) => {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.floor(s / 60)} min ago` : `${Math.floor(s / 3600)} h ago`;
};
