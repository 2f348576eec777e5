import type { Stage, State } from "./state";

const ORDER = ["asr.partial", "asr.final", "first_token", "reply", "vision"];

const ms = (x: number | null | undefined): string => (x === null || x === undefined ? "–" : `${Math.round(x)} ms`);

/** Per-stage server times of the latest events, the round trip, the clock offset and jitter. */
export function Latency({ state }: { state: State }) {
  const stages = ORDER.map((k) => state.stages[k]).filter((s): s is Stage => s !== undefined);
  return (
    <section className="latency" aria-label="Latency" data-testid="latency">
      <h2>Latency</h2>
      <dl>
        <dt>Round trip</dt>
        <dd data-testid="rtt">{ms(state.rttMs)}</dd>
        <dt>Server clock offset</dt>
        <dd>{ms(state.offsetMs)}</dd>
        <dt>Jitter, your audio at the server</dt>
        <dd data-testid="server-jitter">{ms(state.serverJitterMs)}</dd>
        <dt>Jitter, reply audio here</dt>
        <dd>{ms(state.replyJitterMs)}</dd>
      </dl>
      {stages.length > 0 && (
        <table>
          <caption>Latest event of each kind (server queue, engine, send; network to this page)</caption>
          <thead>
            <tr>
              <th scope="col">event</th>
              <th scope="col">queue</th>
              <th scope="col">engine</th>
              <th scope="col">send</th>
              <th scope="col">network</th>
            </tr>
          </thead>
          <tbody>
            {stages.map((s) => (
              <tr key={s.label}>
                <th scope="row">{s.label}</th>
                <td>{ms(s.queueMs)}</td>
                <td>{ms(s.engineMs)}</td>
                <td>{ms(s.sendMs)}</td>
                <td>{ms(s.networkMs)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
