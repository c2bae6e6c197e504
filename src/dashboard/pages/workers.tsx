/** Where instances run: a cluster's workers, or on one node this server's own driver and capacity. */
import { api, ApiError, type SystemInfo as System, type WorkerInfo as Worker } from '../api.js';
import { ago } from '../format.js';
import { usePoll } from '../hooks.js';

export function WorkersPage() {
  const system = usePoll(() => api<System>('GET', '/api/system'), 5000, []);
  const cluster = system.data?.role === 'gateway';
  const workers = usePoll(async () => (cluster ? api<Worker[]>('GET', '/api/workers') : undefined), 5000, [cluster]);
  const s = system.data;
  const error = system.error ?? workers.error;
  return (
    <>
      <h1 tabIndex={-1}>Workers</h1>
      {error && !(error instanceof ApiError && error.status === 401) && (
        <p class="error" role="alert">
          {error.message}
        </p>
      )}
      {s && (
        <p>
          Aether {s.version} on Node.js {s.node}, {cluster ? 'cluster gateway' : 'single node'}, up since {ago(s.started_at)}.
        </p>
      )}
      {s && !cluster && s.isolation && s.capacity && (
        <section class="panel" aria-labelledby="local">
          <h2 id="local">This server</h2>
          <dl class="facts">
            <dt>Isolation driver</dt>
            <dd>
              <strong>{s.isolation.driver}</strong>: {s.isolation.reason}
            </dd>
            <dt>CPUs</dt>
            <dd>{s.capacity.cpus}</dd>
            <dt>Memory</dt>
            <dd>{s.capacity.memory_mb} MB</dd>
            <dt>Instances</dt>
            <dd>{s.capacity.instances}</dd>
          </dl>
        </section>
      )}
      {cluster && workers.data?.length === 0 && <p>No live workers: start one with aether worker.</p>}
      {cluster && workers.data && workers.data.length > 0 && (
        <table class="responsive workers">
          <thead>
            <tr>
              <th scope="col">Worker</th>
              <th scope="col">Driver</th>
              <th scope="col">Instances</th>
              <th scope="col">CPUs</th>
              <th scope="col">Memory</th>
              <th scope="col">Up</th>
            </tr>
          </thead>
          <tbody>
            {workers.data.map((w) => (
              <tr key={w.id}>
                <th scope="row" data-label="Worker">
                  {w.id} <span class="hint">{w.url}</span>
                </th>
                <td data-label="Driver" title={w.driver_reason}>
                  {w.driver}
                </td>
                <td data-label="Instances">
                  {w.instances} / {w.max_instances}
                </td>
                <td data-label="CPUs">{w.cpus}</td>
                <td data-label="Memory">{w.memory_mb} MB</td>
                <td data-label="Up">{ago(w.started_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}
