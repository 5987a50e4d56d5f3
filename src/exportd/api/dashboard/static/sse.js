// Server-sent events over fetch. EventSource cannot send an Authorization header, and a
// token in the URL would land in access logs and browser history; so the stream is
// fetched with the header and parsed here (the text/event-stream format: fields
// `event`, `data`, `id`, `retry`, comment lines starting with `:`, a blank line ends an
// event).

export async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { name: "message", data: [], id: null };
  const dispatch = () => {
    if (event.data.length > 0) {
      let data = event.data.join("\n");
      try {
        data = JSON.parse(data);
      } catch {
        // not JSON: handed over as text
      }
      onEvent({ event: event.name, data, id: event.id });
    }
    event = { name: "message", data: [], id: null };
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        dispatch();
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "event") event.name = text;
      else if (field === "data") event.data.push(text);
      else if (field === "id") event.id = text;
    }
  }
}
