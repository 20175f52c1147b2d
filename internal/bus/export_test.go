package bus

import "encoding/json"

func jsonRoundTrip[T any, PT interface {
	*T
	validator
}](v *T) (T, error) {
	b, err := json.Marshal(v)
	if err != nil {
		var zero T
		return zero, err
	}
	return Decode[T, PT](b)
}
