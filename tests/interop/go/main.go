// Command interop publishes and receives CloudEvents with sdk-go, for tests/interop.
//
//	interop publish URL binary|structured|batch < events.jsonl   one result line per event
//	interop receive PORT                                         one line per event received
//
// Events come in as the neutral JSON lines the pytest side writes (see tests/interop/cases.py);
// received events go out as JSON lines with every attribute as the SDK parsed it and the data
// bytes in base64, so the pytest side compares what each SDK really holds.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/cloudevents/sdk-go/v2/types"
)

type neutralEvent struct {
	ID              string                     `json:"id"`
	Source          string                     `json:"source"`
	Type            string                     `json:"type"`
	Subject         *string                    `json:"subject"`
	Time            *string                    `json:"time"`
	DataContentType *string                    `json:"datacontenttype"`
	Extensions      map[string]json.RawMessage `json:"extensions"`
	DataJSON        json.RawMessage            `json:"data_json"`
	DataBase64      *string                    `json:"data_base64"`
}

type result struct {
	ID     string `json:"id"`
	Status int    `json:"status"`
	Error  string `json:"error,omitempty"`
}

func main() {
	if len(os.Args) != 4 && !(len(os.Args) == 3 && os.Args[1] == "receive") {
		fmt.Fprintln(os.Stderr, "usage: interop publish URL MODE < events.jsonl | interop receive PORT")
		os.Exit(2)
	}
	var err error
	if os.Args[1] == "receive" {
		err = receive(os.Args[2])
	} else {
		err = publish(os.Args[2], os.Args[3])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// toEvent builds the event with the SDK's typed setters, as an application would.
func toEvent(neutral neutralEvent) (event.Event, error) {
	e := event.New()
	e.SetID(neutral.ID)
	e.SetSource(neutral.Source)
	e.SetType(neutral.Type)
	if neutral.Subject != nil {
		e.SetSubject(*neutral.Subject)
	}
	if neutral.Time != nil {
		parsed, err := types.ParseTime(*neutral.Time)
		if err != nil {
			return e, err
		}
		e.SetTime(parsed)
	}
	for name, raw := range neutral.Extensions {
		var value any
		if err := json.Unmarshal(raw, &value); err != nil {
			return e, err
		}
		if number, ok := value.(float64); ok {
			value = int32(number) // the type system's Integer
		}
		e.SetExtension(name, value)
	}
	contentType := ""
	if neutral.DataContentType != nil {
		contentType = *neutral.DataContentType
		e.SetDataContentType(contentType)
	}
	switch {
	case neutral.DataJSON != nil:
		if err := e.SetData(contentType, []byte(neutral.DataJSON)); err != nil {
			return e, err
		}
	case neutral.DataBase64 != nil:
		data, err := base64.StdEncoding.DecodeString(*neutral.DataBase64)
		if err != nil {
			return e, err
		}
		if err := e.SetData(contentType, data); err != nil {
			return e, err
		}
	}
	return e, nil
}

func publish(url, mode string) error {
	var events []event.Event
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		var neutral neutralEvent
		if err := json.Unmarshal(scanner.Bytes(), &neutral); err != nil {
			return err
		}
		e, err := toEvent(neutral)
		if err != nil {
			return fmt.Errorf("event %s: %w", neutral.ID, err)
		}
		events = append(events, e)
	}
	if err := scanner.Err(); err != nil {
		return err
	}
	out := json.NewEncoder(os.Stdout)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if mode == "batch" {
		request, err := cehttp.NewHTTPRequestFromEvents(ctx, url, events)
		status, message := send(request, err)
		for _, e := range events {
			if err := out.Encode(result{e.ID(), status, message}); err != nil {
				return err
			}
		}
		return nil
	}
	if mode == "structured" {
		ctx = binding.WithForceStructured(ctx)
	} else if mode != "binary" {
		return fmt.Errorf("unknown mode %q", mode)
	}
	for _, e := range events {
		request, err := cehttp.NewHTTPRequestFromEvent(ctx, url, e)
		status, message := send(request, err)
		if err := out.Encode(result{e.ID(), status, message}); err != nil {
			return err
		}
	}
	return nil
}

// send posts one request: the status, or 0 and why the SDK or the client could not send it.
func send(request *http.Request, err error) (int, string) {
	if err != nil {
		return 0, err.Error()
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		return 0, err.Error()
	}
	defer response.Body.Close()
	body, _ := io.ReadAll(response.Body)
	if response.StatusCode >= 300 {
		return response.StatusCode, string(body)
	}
	return response.StatusCode, ""
}

func receive(port string) error {
	var lock sync.Mutex
	out := json.NewEncoder(os.Stdout)
	handler := func(w http.ResponseWriter, r *http.Request) {
		e, err := cehttp.NewEventFromHTTPRequest(r)
		lock.Lock()
		defer lock.Unlock()
		if err != nil {
			_ = out.Encode(map[string]string{"error": err.Error()})
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		_ = out.Encode(received(e))
		w.WriteHeader(http.StatusNoContent)
	}
	return http.ListenAndServe("127.0.0.1:"+port, http.HandlerFunc(handler))
}

// received is the event as sdk-go holds it: attribute values as the SDK typed them.
func received(e *event.Event) map[string]any {
	attributes := map[string]any{
		"specversion": e.SpecVersion(),
		"id":          e.ID(),
		"source":      e.Source(),
		"type":        e.Type(),
	}
	if e.Subject() != "" {
		attributes["subject"] = e.Subject()
	}
	if !e.Time().IsZero() {
		attributes["time"] = e.Time().UTC().Format(time.RFC3339Nano)
	}
	if e.DataContentType() != "" {
		attributes["datacontenttype"] = e.DataContentType()
	}
	if e.DataSchema() != "" {
		attributes["dataschema"] = e.DataSchema()
	}
	for name, value := range e.Extensions() {
		attributes[name] = value
	}
	var data any
	if e.Data() != nil {
		data = base64.StdEncoding.EncodeToString(bytes.Clone(e.Data()))
	}
	return map[string]any{"attributes": attributes, "data_base64": data}
}
